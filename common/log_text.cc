#include "common/log_text.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace relib::common {
namespace {

constexpr char kHex[] = "0123456789abcdef";

void AppendHex(unsigned char byte, std::string& out) {
  out += "\\x";
  out += kHex[byte >> 4];
  out += kHex[byte & 0xf];
}

// Length of the valid UTF-8 sequence starting at text[i] (2..4), or 0.
size_t Utf8Length(std::string_view text, size_t i, uint32_t* code_point) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(i);
  size_t length;
  uint32_t cp;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2, cp = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3, cp = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4, cp = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid.
  if ((length == 3 && cp < 0x800) || (length == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;
  }
  *code_point = cp;
  return length;
}

}  // namespace

std::string EscapeForLog(std::string_view text, size_t max_bytes) {
  std::string out;
  size_t end = text.size() > max_bytes ? max_bytes : text.size();
  out.reserve(end + end / 8);
  size_t i = 0;
  while (i < end) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      if (c == '\\') out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c == '\n') {
      out += "\\n", ++i;
    } else if (c == '\r') {
      out += "\\r", ++i;
    } else if (c == '\t') {
      out += "\\t", ++i;
    } else if (c < 0x80) {
      AppendHex(c, out), ++i;
    } else {
      uint32_t cp = 0;
      size_t length = Utf8Length(text, i, &cp);
      bool printable = length > 0 && i + length <= end && !(cp >= 0x80 && cp <= 0x9f) && cp != 0x2028 && cp != 0x2029;
      if (printable) {
        out.append(text.data() + i, length);
        i += length;
      } else {
        AppendHex(c, out), ++i;
      }
    }
  }
  if (i < text.size()) absl::StrAppend(&out, " [... ", text.size() - i, " more bytes]");
  return out;
}

}  // namespace relib::common
