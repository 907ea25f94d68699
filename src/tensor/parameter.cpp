#include "tensor/parameter.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unordered_map>

#include "common/error.h"
#include "tensor/memory_arena.h"

namespace fp4serve {

std::string_view bind_outcome_name(BindOutcome outcome) {
  switch (outcome) {
    case BindOutcome::Copied: return "copied";
    case BindOutcome::Rebound: return "rebound";
    case BindOutcome::Registered: return "registered";
    case BindOutcome::Aliased: return "aliased";
  }
  return "?";
}

Tensor ParameterSet::placed(const Tensor& tensor) const {
  if (!arena_ || arena_->holds(*tensor.storage)) return tensor;
  FP4_CHECK(tensor.device() == arena_->device(), "a {} tensor cannot be a parameter of a model on {}",
            tensor.describe(), device_name(arena_->device()));
  Tensor copy = Tensor::empty(tensor.shape, tensor.dtype, *arena_);
  copy_into(copy, tensor);
  return copy;
}

Parameter& ParameterSet::add(const std::string& name, Tensor tensor) {
  FP4_CHECK(!contains(name), "parameter '{}' is registered twice", name);
  auto param = std::make_shared<Parameter>(Parameter{placed(tensor)});
  by_name_[name] = param;
  return *param;
}

const Tensor& ParameterSet::get(const std::string& name) const {
  auto it = by_name_.find(name);
  FP4_CHECK(it != by_name_.end(), "no parameter named '{}'", name);
  return it->second->tensor;
}

std::shared_ptr<Parameter> ParameterSet::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

BindOutcome ParameterSet::copy_or_rebind(const std::string& name, const Tensor& value) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    add(name, value);
    return BindOutcome::Registered;
  }
  if (it->second->tensor.same_shape_and_dtype(value)) {
    copy_into(it->second->tensor, value);
    return BindOutcome::Copied;
  }
  // A fresh Parameter, so that other names which shared the old one keep it.
  it->second = std::make_shared<Parameter>(Parameter{placed(value)});
  return BindOutcome::Rebound;
}

BindOutcome ParameterSet::alias_or_bind_derived(const std::string& source, const std::string& derived,
                                                const Tensor& value) {
  auto src = find(source);
  FP4_CHECK(src != nullptr, "cannot derive '{}': source parameter '{}' does not exist", derived, source);
  if (!src->tensor.same_shape_and_dtype(value)) return copy_or_rebind(derived, value);
  copy_into(src->tensor, value);
  by_name_[derived] = src;
  return BindOutcome::Aliased;
}

std::vector<std::string> ParameterSet::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, _] : by_name_) out.push_back(name);
  return out;
}

std::vector<std::string> ParameterSet::names_of(const std::string& name) const {
  auto param = find(name);
  FP4_CHECK(param != nullptr, "no parameter named '{}'", name);
  std::vector<std::string> out;
  for (const auto& [other, p] : by_name_)
    if (p == param) out.push_back(other);
  return out;
}

bool ParameterSet::are_aliases(const std::string& a, const std::string& b) const {
  auto pa = find(a);
  return pa != nullptr && pa == find(b);
}

std::vector<ParameterSet::StorageUse> ParameterSet::storage_uses() const {
  std::vector<StorageUse> uses;
  std::unordered_map<const Storage*, size_t> index_of;
  for (const auto& [name, param] : by_name_) {
    const Storage* storage = param->tensor.storage.get();
    auto [it, inserted] = index_of.try_emplace(storage, uses.size());
    if (inserted)
      uses.push_back({storage, storage->nbytes(), {name}});
    else
      uses[it->second].names.push_back(name);
  }
  return uses;
}

size_t ParameterSet::total_bytes() const {
  size_t total = 0;
  for (const auto& use : storage_uses()) total += use.nbytes;
  return total;
}

std::string ParameterSet::inspect() const {
  std::string out;
  for (const auto& use : storage_uses())
    out += fmt::format("{:>12} B  {:<4}  {}\n", use.nbytes, device_name(use.storage->device()),
                       fmt::join(use.names, " = "));
  out += fmt::format("{:>12} B  total ({} storages, {} names)\n", total_bytes(), storage_uses().size(),
                     by_name_.size());
  return out;
}

}  // namespace fp4serve
