// A stand-in for libFuzzer when relibd is built with GCC: runs a fuzz target
// on every file of the corpus directories given, then on mutations of them
// (byte flips, truncations, insertions from a fixed seed) for -max_total_time
// seconds. Exits non-zero only if the target crashes (it then dies itself).
// Used by the ctest smoke runs; scripts/fuzz uses real libFuzzer (clang).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  double seconds = 1;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "-max_total_time=", 16) == 0) {
      seconds = std::atof(argv[i] + 16);
    } else if (argv[i][0] != '-') {
      std::error_code error;
      for (const auto& entry : std::filesystem::directory_iterator(argv[i], error)) {
        std::ifstream in(entry.path(), std::ios::binary);
        corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      }
    }
  }
  if (corpus.empty()) corpus.emplace_back();
  for (const auto& input : corpus) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::mt19937_64 random(42);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = corpus.size();
  while (std::chrono::steady_clock::now() < deadline) {
    std::string input = corpus[random() % corpus.size()];
    int edits = 1 + random() % 8;
    for (int e = 0; e < edits; ++e) {
      switch (random() % 4) {
        case 0:
          if (!input.empty()) input[random() % input.size()] ^= static_cast<char>(1 << (random() % 8));
          break;
        case 1:
          if (!input.empty()) input.resize(random() % input.size());
          break;
        case 2:
          input.insert(input.begin() + (input.empty() ? 0 : random() % input.size()), static_cast<char>(random()));
          break;
        case 3:
          if (!input.empty()) input[random() % input.size()] = static_cast<char>(random());
          break;
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    ++runs;
  }
  std::printf("replay: %llu runs, no crash\n", static_cast<unsigned long long>(runs));
  return 0;
}
