// Errors as HTTP answers: {"error": {"message", "type", "code"}} with a 4xx/5xx status. Request validation throws
// plain fp4serve::Error (a 400); HttpError carries any other status. Messages name the field at fault.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/error.h"

namespace fp4serve {

class HttpError : public Error {
 public:
  HttpError(int status, std::string message) : Error(std::move(message)), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// OpenAI's error type names by status ("invalid_request_error", "authentication_error", ...).
std::string_view error_type_for_status(int status);
nlohmann::json error_body(int status, const std::string& message);

}  // namespace fp4serve
