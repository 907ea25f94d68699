// Named parameters of a module. A parameter may carry several names (aliases): a derived tensor with the same
// shape and dtype as its source is written into the source's storage and registered as a second name, so memory
// is spent once. The two bind operations below are the reference system's rules 1 and 2 (reference-system.md).
// A set made with a MemoryArena keeps every parameter in it: a tensor registered from elsewhere is copied into a
// block of the arena, so that the whole set's memory can be released and resumed at the same addresses.
// Not thread-safe: the engine thread owns a model's parameters.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace fp4serve {

struct Parameter {
  Tensor tensor;
};

enum class BindOutcome {
  Copied,      // same shape and dtype: bytes copied into the existing storage, address unchanged
  Rebound,     // shape or dtype differed: the name now refers to the new tensor
  Registered,  // the name was absent: registered
  Aliased,     // derived has the source's shape and dtype: written into the source's storage, second name added
};
std::string_view bind_outcome_name(BindOutcome outcome);

class ParameterSet {
 public:
  ParameterSet() = default;
  explicit ParameterSet(std::shared_ptr<MemoryArena> arena) : arena_(std::move(arena)) {}
  MemoryArena* arena() const { return arena_.get(); }  // null: parameters keep the storage they were given

  Parameter& add(const std::string& name, Tensor tensor);  // the name must be new
  bool contains(const std::string& name) const { return by_name_.contains(name); }
  const Tensor& get(const std::string& name) const;       // throws naming the parameter when absent
  std::shared_ptr<Parameter> find(const std::string& name) const;  // nullptr when absent

  // Rule 1: same shape+dtype -> copy into the existing storage (pointer kept); else rebind; absent -> register.
  BindOutcome copy_or_rebind(const std::string& name, const Tensor& value);
  // Rule 2: value has the source's shape+dtype -> copy into the source's storage and make `derived` a second
  // name of the source parameter; else copy_or_rebind(derived, value). The source must exist.
  BindOutcome alias_or_bind_derived(const std::string& source, const std::string& derived, const Tensor& value);

  std::vector<std::string> names() const;  // sorted
  std::vector<std::string> names_of(const std::string& name) const;  // every name sharing this parameter, sorted
  bool are_aliases(const std::string& a, const std::string& b) const;

  struct StorageUse {
    const Storage* storage;
    size_t nbytes;
    std::vector<std::string> names;  // every parameter name viewing this storage, sorted
  };
  std::vector<StorageUse> storage_uses() const;  // each storage once, in order of first name
  size_t total_bytes() const;                    // each storage counted once
  std::string inspect() const;                   // one line per storage: bytes, device, names

 private:
  Tensor placed(const Tensor& tensor) const;  // in the arena (a copy when it is elsewhere), or as given without one

  std::shared_ptr<MemoryArena> arena_;
  std::map<std::string, std::shared_ptr<Parameter>> by_name_;
};

}  // namespace fp4serve
