// The CPU backend of the releasable memory range, measured from outside: mincore() for the range's resident pages,
// /proc/self/statm for the process's RSS, and a MAP_FIXED_NOREPLACE probe for the reservation. Then the arena on
// top of it (blocks keep their addresses; offload keeps the bytes, discard zeroes them) and parameters placed in it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "common/error.h"
#include "tensor/memory_arena.h"
#include "tensor/parameter.h"
#include "tensor/virtual_memory.h"

namespace fp4serve {
namespace {

constexpr size_t kRangeBytes = size_t{64} << 20;

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGE_SIZE)); }

size_t resident_pages(const uint8_t* base, size_t bytes) {
  std::vector<unsigned char> flags(bytes / page_size());
  EXPECT_EQ(mincore(const_cast<uint8_t*>(base), bytes, flags.data()), 0) << std::strerror(errno);
  return static_cast<size_t>(std::count_if(flags.begin(), flags.end(), [](unsigned char f) { return f & 1; }));
}

// Resident bytes of this process from /proc/self/smaps_rollup, which walks the page tables (statm's counters are
// cached per thread and may lag by dozens of pages), read without allocating (a heap allocation could itself
// change the RSS).
size_t process_rss_bytes() {
  char text[4096] = {};
  const int fd = open("/proc/self/smaps_rollup", O_RDONLY);
  const ssize_t n = read(fd, text, sizeof(text) - 1);
  close(fd);
  EXPECT_GT(n, 0);
  const char* rss = std::strstr(text, "\nRss:");
  unsigned long kib = 0;
  EXPECT_TRUE(rss != nullptr && std::sscanf(rss, "\nRss: %lu kB", &kib) == 1) << text;
  return kib * 1024;
}

void fill_pattern(uint8_t* data, size_t bytes, uint8_t seed) {
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 12));
}

bool is_reserved(uint8_t* address, size_t bytes) {
  void* probe = mmap(address, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (probe != MAP_FAILED) {
    munmap(probe, bytes);
    return probe != address;  // an old kernel ignoring the flag may place it elsewhere
  }
  return errno == EEXIST;
}

TEST(VirtualMemoryRange, ReleaseGivesThePagesBackAndResumeRecommitsZerosAtTheSameAddress) {
  {  // The first release pages in its code (file-backed pages count in the RSS too); measure the second one.
    VirtualMemoryRange warm_up(Device::CPU, page_size());
    warm_up.commit(page_size());
    warm_up.release();
    process_rss_bytes();
  }
  VirtualMemoryRange range(Device::CPU, kRangeBytes);
  uint8_t* const base = range.base();
  EXPECT_EQ(range.committed_bytes(), 0u);
  range.commit(kRangeBytes);
  fill_pattern(base, kRangeBytes, 3);
  EXPECT_EQ(resident_pages(base, kRangeBytes), kRangeBytes / page_size());

  const size_t rss_before = process_rss_bytes();
  range.release();
  const size_t rss_after = process_rss_bytes();
  EXPECT_TRUE(range.released());
  EXPECT_EQ(resident_pages(base, kRangeBytes), 0u);
  EXPECT_NEAR(static_cast<double>(rss_before - rss_after), static_cast<double>(kRangeBytes),
              static_cast<double>(page_size()));
  EXPECT_TRUE(is_reserved(base, kRangeBytes)) << "the released range must stay reserved";

  range.release();  // twice: nothing happens
  EXPECT_TRUE(range.released());
  range.resume();
  EXPECT_EQ(range.base(), base);
  EXPECT_EQ(range.committed_bytes(), kRangeBytes);
  EXPECT_EQ(resident_pages(base, kRangeBytes), 0u);  // committed, not yet touched
  const std::vector<uint8_t> zeros(kRangeBytes, 0);
  EXPECT_EQ(std::memcmp(base, zeros.data(), kRangeBytes), 0);
  fill_pattern(base, kRangeBytes, 9);
  EXPECT_EQ(base[12345], static_cast<uint8_t>(9 + 12345 * 7 + 3));
  range.resume();  // not released: nothing happens
  EXPECT_EQ(base[12345], static_cast<uint8_t>(9 + 12345 * 7 + 3));
}

TEST(VirtualMemoryRange, CommitsWholePagesWithinTheCapacityOnly) {
  VirtualMemoryRange range(Device::CPU, 10 * page_size() + 1);
  EXPECT_EQ(range.capacity(), 11 * page_size());
  range.commit(1);
  EXPECT_EQ(range.committed_bytes(), page_size());
  range.commit(3 * page_size() + 5);
  EXPECT_EQ(range.committed_bytes(), 4 * page_size());
  range.base()[4 * page_size() - 1] = 1;  // the last committed byte is writable
  EXPECT_TRUE(is_reserved(range.base() + 4 * page_size(), page_size()));  // the next page is reserved, not backed
  EXPECT_THROW(range.commit(12 * page_size()), Error);
  range.release();
  EXPECT_THROW(range.commit(page_size()), Error);
}

TEST(VirtualMemoryRangeDeathTest, TouchingReleasedMemoryFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  VirtualMemoryRange range(Device::CPU, page_size());
  range.commit(page_size());
  range.release();
  volatile uint8_t* byte = range.base();
  EXPECT_DEATH(*byte = 1, "");
}

TEST(MemoryArena, BlocksKeepTheirAddressesAndOffloadKeepsTheirBytes) {
  auto arena = MemoryArena::create(Device::CPU, size_t{8} << 20);
  Tensor a = Tensor::empty({1000}, DType::F32, *arena);
  Tensor b = Tensor::empty({3, 7}, DType::BF16, *arena);
  std::iota(a.span<float>().begin(), a.span<float>().end(), 0.5f);
  std::iota(b.span<uint16_t>().begin(), b.span<uint16_t>().end(), uint16_t{100});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % MemoryArena::kAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % MemoryArena::kAlignment, 0u);
  EXPECT_EQ(arena->used_bytes(), MemoryArena::block_bytes(4000) + MemoryArena::block_bytes(42));
  const std::vector<float> a_before(a.span<float>().begin(), a.span<float>().end());
  const std::vector<uint16_t> b_before(b.span<uint16_t>().begin(), b.span<uint16_t>().end());
  uint8_t* const a_address = a.raw();

  arena->release(/*keep_contents=*/true);
  EXPECT_TRUE(arena->released());
  EXPECT_EQ(resident_pages(arena->range().base(), arena->committed_bytes()), 0u);
  EXPECT_THROW(Tensor::empty({4}, DType::F32, *arena), Error);
  arena->resume();
  EXPECT_EQ(a.raw(), a_address);
  EXPECT_EQ(std::vector<float>(a.span<float>().begin(), a.span<float>().end()), a_before);
  EXPECT_EQ(std::vector<uint16_t>(b.span<uint16_t>().begin(), b.span<uint16_t>().end()), b_before);

  arena->release(/*keep_contents=*/false);
  arena->resume();
  EXPECT_EQ(a.raw(), a_address);
  for (float v : a.span<float>()) ASSERT_EQ(v, 0.0f);
  for (uint16_t v : b.span<uint16_t>()) ASSERT_EQ(v, 0);
}

TEST(MemoryArena, FreedBlocksAreReusedZeroedAndMerged) {
  auto arena = MemoryArena::create(Device::CPU, size_t{1} << 20);
  Tensor first = Tensor::empty({256}, DType::U8, *arena);
  Tensor second = Tensor::empty({256}, DType::U8, *arena);
  Tensor third = Tensor::empty({256}, DType::U8, *arena);
  uint8_t* const first_address = first.raw();
  std::memset(first.raw(), 0xab, 256);
  std::memset(second.raw(), 0xcd, 256);
  first = {};
  second = {};  // merged with the first's block: 512 bytes at the start
  EXPECT_EQ(arena->used_bytes(), 256u);
  Tensor reused = Tensor::empty({512}, DType::U8, *arena);
  EXPECT_EQ(reused.raw(), first_address);
  for (uint8_t v : reused.span<uint8_t>()) ASSERT_EQ(v, 0);
  EXPECT_THROW(Tensor::empty({int64_t{1} << 20}, DType::U8, *arena), Error);  // beyond the capacity

  // A block freed while the arena is released is only bookkeeping; the arena outlives its last block.
  arena->release(/*keep_contents=*/false);
  third = {};
  arena->resume();
  std::weak_ptr<MemoryArena> alive = arena;
  arena.reset();
  EXPECT_FALSE(alive.expired());  // `reused` still holds it
  reused = {};
  EXPECT_TRUE(alive.expired());
}

TEST(ParameterSet, WithAnArenaEveryParameterLivesInIt) {
  auto arena = MemoryArena::create(Device::CPU, size_t{1} << 20);
  ParameterSet params(arena);
  Tensor outside = Tensor::empty({4}, DType::F32, Device::CPU);
  outside.data<float>()[2] = 7.0f;
  params.add("w", outside);
  EXPECT_TRUE(arena->holds(*params.get("w").storage));
  EXPECT_NE(params.get("w").storage, outside.storage);
  EXPECT_EQ(params.get("w").data<float>()[2], 7.0f);

  Tensor wider = Tensor::empty({8}, DType::F32, Device::CPU);
  EXPECT_EQ(params.copy_or_rebind("w", wider), BindOutcome::Rebound);
  EXPECT_TRUE(arena->holds(*params.get("w").storage));
  EXPECT_EQ(params.copy_or_rebind("derived", outside), BindOutcome::Registered);
  EXPECT_TRUE(arena->holds(*params.get("derived").storage));
  const uint8_t* address = params.get("derived").raw();
  outside.data<float>()[0] = 1.5f;
  EXPECT_EQ(params.copy_or_rebind("derived", outside), BindOutcome::Copied);
  EXPECT_EQ(params.get("derived").raw(), address);
  EXPECT_EQ(params.get("derived").data<float>()[0], 1.5f);

  ParameterSet plain;
  plain.add("w", outside);
  EXPECT_EQ(plain.get("w").storage, outside.storage);  // no arena: kept as given
}

}  // namespace
}  // namespace fp4serve
