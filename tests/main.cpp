// Test main for every test binary. CTest runs one test per process; a process whose tests all skipped (a GPU test
// without a GPU, an npm test without node) exits 77, which CTest reports as "Skipped". Anything that failed,
// including a suite set-up, exits non-zero as usual and fails.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  // gtest counts a skipped test as neither failed nor successful.
  if (rc == 0 && unit.skipped_test_count() > 0 && unit.successful_test_count() == 0)
    return 77;
  return rc;
}
