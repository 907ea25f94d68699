// One layer of the paged KV cache as the kernels see it: K and V are bf16 [n_pages, page_size, n_kv_heads,
// head_dim]; a sequence's token at position p lives in page page_table[p / page_size], slot p % page_size.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve {

struct PagedKvLayer {
  bf16_bits* k;  // [n_pages, page_size, n_kv_heads, head_dim] bf16
  bf16_bits* v;  // [n_pages, page_size, n_kv_heads, head_dim] bf16
  int64_t n_pages;
  int64_t page_size;
  int64_t n_kv_heads;
  int64_t head_dim;

  // Element offset of (position, kv_head, 0) for a sequence with this page table.
  int64_t offset(const int32_t* page_table, int64_t position, int64_t kv_head) const {
    const int64_t page = page_table[position / page_size];
    return ((page * page_size + position % page_size) * n_kv_heads + kv_head) * head_dim;
  }
};

// One sequence's share of a batch: its new tokens are rows [first_row, first_row + n_tokens) of the batch's
// activations and sit at positions [first_position, first_position + n_tokens).
struct PagedSequence {
  const int32_t* page_table;  // pages covering positions [0, first_position + n_tokens)
  int64_t first_position;
  int64_t n_tokens;
  int64_t first_row;
};

}  // namespace fp4serve
