# CMake package config of the groupnorm_ext op library, shipped inside the Python package.
#
#   find_package(Torch REQUIRED)          # torch.utils.cmake_prefix_path on CMAKE_PREFIX_PATH
#   find_package(GroupNormExt REQUIRED)   # groupnorm_ext.cmake_prefix_path on CMAKE_PREFIX_PATH
#   target_link_libraries(my_program PRIVATE GroupNormExt::GroupNormExt)
#
# Defines the imported target GroupNormExt::GroupNormExt (the library, its include folder,
# C++20, and libtorch through the `torch` target), and GroupNormExt_LIBRARY /
# GroupNormExt_INCLUDE_DIR. Linking the target registers torch.ops.groupnorm_ext.* when the
# program starts, so torch::jit::load reads models that call them.

get_filename_component(_groupnorm_ext_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(GroupNormExt_LIBRARY "${_groupnorm_ext_root}/lib/libgroupnorm_ext.so")
set(GroupNormExt_INCLUDE_DIR "${_groupnorm_ext_root}/include")
unset(_groupnorm_ext_root)

if(NOT EXISTS "${GroupNormExt_LIBRARY}")
  set(GroupNormExt_FOUND FALSE)
  set(GroupNormExt_NOT_FOUND_MESSAGE
      "${GroupNormExt_LIBRARY} is missing: build groupnorm_ext first (pip install / make build)")
  return()
endif()

if(NOT TARGET torch)
  include(CMakeFindDependencyMacro)
  find_dependency(Torch)
endif()

if(NOT TARGET GroupNormExt::GroupNormExt)
  add_library(GroupNormExt::GroupNormExt SHARED IMPORTED)
  set_target_properties(GroupNormExt::GroupNormExt PROPERTIES
    IMPORTED_LOCATION "${GroupNormExt_LIBRARY}"
    IMPORTED_SONAME "libgroupnorm_ext.so"
    INTERFACE_INCLUDE_DIRECTORIES "${GroupNormExt_INCLUDE_DIR}"
    INTERFACE_COMPILE_FEATURES cxx_std_20
    # The program may never call into the library (it only runs TorchScript models): keep the
    # linker from dropping it under --as-needed, as torch's own config does for torch_cpu.
    INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed,\"${GroupNormExt_LIBRARY}\" -Wl,--as-needed;torch")
endif()

set(GroupNormExt_FOUND TRUE)
