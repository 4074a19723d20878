// Loads a TorchScript model saved from Python with torch.jit.save -- one that calls
// torch.ops.groupnorm_ext.group_norm -- runs it on an input saved with torch.save, and prints
// the output. No Python interpreter: the ops come from libgroupnorm_ext.so, linked in.
//
//   run_model MODEL.pt INPUT.pt [OUTPUT.pt]
//
// OUTPUT.pt, when given, receives the output tensor (torch.load reads it).
#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/script.h>

#include <groupnorm_ext/groupnorm_ext.h>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUT.pt [OUTPUT.pt]\n";
    return 2;
  }
  try {
    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();
    const torch::Tensor input = torch::jit::pickle_load(read_file(argv[2])).toTensor();

    torch::Tensor output;
    {
      c10::InferenceMode inference;  // no autograd bookkeeping: deployment
      output = model.forward({input}).toTensor();
    }

    std::cout << "groupnorm_ext: " << (groupnorm_ext::built_with_cuda() ? "CUDA + CPU" : "CPU-only")
              << " build, CPU loops " << groupnorm_ext::cpu_capability() << "\n"
              << "input " << input.sizes() << " -> output " << output.sizes() << " "
              << output.dtype() << "\n"
              << std::setprecision(9) << "output sum " << output.sum().item<double>()
              << ", mean " << output.mean().item<double>() << ", std "
              << output.std().item<double>() << "\n"
              << "output[0, 0, 0, :]";
    const torch::Tensor row = output[0][0][0].to(torch::kFloat).contiguous();
    for (int64_t i = 0; i < row.numel(); ++i)
      std::cout << " " << std::fixed << std::setprecision(4) << row.data_ptr<float>()[i];
    std::cout << "\n";
    if (argc == 4) write_file(argv[3], torch::jit::pickle_save(output));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
