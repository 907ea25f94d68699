// Errors: library code throws fp4serve::Error with a message that names the file, tensor, field or request at
// fault (and how to fix it where a user can). Callers at the edges (CLI, HTTP) turn it into an exit code or a 4xx.
#pragma once
#include <stdexcept>
#include <string>
#ifndef __CUDACC__
#include <fmt/format.h>
#endif

namespace fp4serve {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

#ifndef __CUDACC__  // fmt's compile-time format checks do not build under nvcc
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

#define FP4_CHECK(cond, ...)                      \
  do {                                            \
    if (!(cond)) ::fp4serve::fail(__VA_ARGS__);   \
  } while (0)
#endif

}  // namespace fp4serve
