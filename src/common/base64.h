// Standard base64 (RFC 4648 alphabet, '=' padding), as Python's base64.b64encode writes it: binary payloads in
// JSON (routed experts). Decoding is strict: a character outside the alphabet or a bad length throws, naming `what`.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fp4serve {

std::string base64_encode(std::span<const uint8_t> bytes);
std::vector<uint8_t> base64_decode(std::string_view text, std::string_view what);

}  // namespace fp4serve
