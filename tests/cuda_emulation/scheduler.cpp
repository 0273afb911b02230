// The CTA emulator behind emulated_cuda.h: one ucontext coroutine per CUDA thread, switched only at the points where
// threads interact (barrier, warp collective, end), in a random order at every round, so that a kernel relying on
// an order the hardware does not promise gives different (wrong) results from run to run.
//
// Modelled strictly:
// - __syncthreads releases only when every thread of the CTA waits at it (a thread that exited is an error);
// - a warp collective (mma, ballot) needs all 32 lanes there, with the same operation and a full mask;
// - mma.m16n8k256 .b1 AND-popc uses the PTX ISA fragment layout: lane l = 4g + q holds A row g (regs 0, 2) and g + 8
//   (regs 1, 3), K bits 32q..32q+31 (regs 0, 1) and 128 + 32q.. (regs 2, 3); B column g, K bits 32q.. (reg 0) and
//   128 + 32q.. (reg 1); D rows g (0, 1) and g + 8 (2, 3), columns 2q, 2q + 1;
// - cp.async copies read the source at issue and, in "late" mode, fill the destination with a poison pattern that
//   is replaced by the data only when the issuing thread's wait_group retires the group ("early" mode writes at
//   issue). Reading a stage before waiting for it, or before the barrier after another thread's wait, sees poison;
//   sizes, alignment and the destination's bounds are checked; copies never waited for are an error.
// - dynamic shared memory is poisoned at every CTA start.
#include <ucontext.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "emulated_cuda.h"

EmuDim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

enum class State { kRun, kAtBarrier, kAtCollective, kDone };
enum class Collective { kNone, kMma, kBallot };

struct Copy {
  uint8_t* dst;
  std::vector<uint8_t> data;
};

struct Thread {
  ucontext_t context;
  std::vector<char> stack;
  State state = State::kRun;
  unsigned x = 0, y = 0;
  Collective op = Collective::kNone;
  int32_t* mma_d = nullptr;
  uint32_t mma_a[4] = {}, mma_b[2] = {};
  bool predicate = false;
  unsigned mask = 0, ballot = 0;
  std::vector<Copy> open_group;
  std::vector<std::vector<Copy>> committed;  // oldest first
};

constexpr size_t kStackBytes = 256 * 1024;
constexpr uint8_t kPoison = 0xA5;
constexpr size_t kGuardBytes = 4096;  // past the dynamic shared memory: a write there is reported

std::vector<Thread> threads;
int current = -1;
ucontext_t scheduler_context;
const std::function<void()>* kernel_body = nullptr;
std::vector<uint8_t> shared_memory;  // the CTA's dynamic shared memory, then kGuardBytes of guard
size_t shared_bytes = 0;
bool late_copies = true;
std::string first_error;
long error_count = 0;

void switch_to_scheduler() { swapcontext(&threads[current].context, &scheduler_context); }

void thread_entry() {
  (*kernel_body)();
  threads[current].state = State::kDone;
  switch_to_scheduler();
}

void retire(std::vector<Copy>& group) {
  for (Copy& c : group) std::memcpy(c.dst, c.data.data(), c.data.size());
  group.clear();
}

void resolve_mma(Thread* lanes) {
  uint8_t a[16][256] = {}, b[256][8] = {};
  int32_t d[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 32; ++i) a[g + 8 * (r & 1)][32 * q + i + 128 * (r >> 1)] = (lanes[l].mma_a[r] >> i) & 1;
    for (int r = 0; r < 2; ++r)
      for (int i = 0; i < 32; ++i) b[32 * q + i + 128 * r][g] = (lanes[l].mma_b[r] >> i) & 1;
    for (int j = 0; j < 4; ++j) d[g + 8 * (j >> 1)][2 * q + (j & 1)] = lanes[l].mma_d[j];
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      int32_t pop = 0;
      for (int k = 0; k < 256; ++k) pop += a[m][k] & b[k][n];
      d[m][n] += pop;
    }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int j = 0; j < 4; ++j) lanes[l].mma_d[j] = d[g + 8 * (j >> 1)][2 * q + (j & 1)];
  }
}

// All lanes of the warp at `first` wait at a collective: check it is one operation for the whole warp, carry it out.
bool resolve_collective(int first, int lanes) {
  Thread* warp = &threads[first];
  if (lanes != 32) {
    emu_report("warp collective in a partial warp");
    return false;
  }
  for (int l = 0; l < 32; ++l)
    if (warp[l].op != warp[0].op) {
      emu_report("divergent warp collective (lanes at different operations)");
      return false;
    }
  if (warp[0].op == Collective::kMma) {
    resolve_mma(warp);
  } else {
    unsigned result = 0;
    for (int l = 0; l < 32; ++l) {
      if (warp[l].mask != 0xffffffffu) emu_report("__ballot_sync without the full mask");
      result |= static_cast<unsigned>(warp[l].predicate) << l;
    }
    for (int l = 0; l < 32; ++l) warp[l].ballot = result;
  }
  for (int l = 0; l < 32; ++l) {
    warp[l].op = Collective::kNone;
    warp[l].state = State::kRun;
  }
  return true;
}

void wait_at_collective(Collective op) {
  threads[current].op = op;
  threads[current].state = State::kAtCollective;
  switch_to_scheduler();
}

}  // namespace

void emu_report(const char* what) {
  if (error_count++ == 0) first_error = what;
}

extern "C" EMU_EXPORT long zoo_emu_error_count() { return error_count; }
extern "C" EMU_EXPORT const char* zoo_emu_first_error() { return first_error.c_str(); }
extern "C" EMU_EXPORT void zoo_emu_clear_errors() {
  error_count = 0;
  first_error.clear();
}

void __syncthreads() {
  threads[current].state = State::kAtBarrier;
  switch_to_scheduler();
}

unsigned __ballot_sync(unsigned mask, bool predicate) {
  threads[current].mask = mask;
  threads[current].predicate = predicate;
  wait_at_collective(Collective::kBallot);
  return threads[current].ballot;
}

void mma_and_popc(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Thread& t = threads[current];
  t.mma_d = d;
  std::memcpy(t.mma_a, a, sizeof t.mma_a);
  t.mma_b[0] = b0;
  t.mma_b[1] = b1;
  wait_at_collective(Collective::kMma);
}

void emu_cp_async(void* dst, const void* src, int bytes, int src_bytes, bool cache_global) {
  if (bytes != 4 && bytes != 8 && bytes != 16) emu_report("cp.async of a size other than 4, 8 or 16 bytes");
  if (cache_global && bytes != 16) emu_report("cp.async.cg needs 16 bytes");
  if (src_bytes < 0 || src_bytes > bytes) emu_report("cp.async src-size outside [0, cp-size]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
    emu_report("cp.async address not aligned to its size");
  uint8_t* d = static_cast<uint8_t*>(dst);
  if (d < shared_memory.data() || d + bytes > shared_memory.data() + shared_bytes) {
    emu_report("cp.async destination outside the dynamic shared memory");
    return;
  }
  Copy copy{d, std::vector<uint8_t>(bytes, 0)};
  if (src_bytes > 0) std::memcpy(copy.data.data(), src, src_bytes);  // zero fill past src_bytes
  if (late_copies) {
    std::memset(d, kPoison, bytes);
    threads[current].open_group.push_back(std::move(copy));
  } else {
    std::memcpy(d, copy.data.data(), bytes);
  }
}

void cp_async_commit() {
  Thread& t = threads[current];
  t.committed.push_back(std::move(t.open_group));
  t.open_group.clear();
}

void emu_cp_async_wait(int pending) {
  Thread& t = threads[current];
  while (static_cast<int>(t.committed.size()) > pending) {
    retire(t.committed.front());
    t.committed.erase(t.committed.begin());
  }
}

uint32_t* dynamic_shared_words() { return reinterpret_cast<uint32_t*>(shared_memory.data()); }

bool emu_run_cta(unsigned bx, unsigned by, unsigned tx, unsigned ty, size_t dyn_smem,
                 const std::function<void()>& body, uint32_t seed) {
  std::mt19937 rng(seed ^ (bx * 2654435761u) ^ (by * 40503u));
  late_copies = (rng() & 3) != 0;  // mostly late (catches missing waits), sometimes early
  const int n = static_cast<int>(tx * ty);
  threads.resize(n);
  kernel_body = &body;
  shared_bytes = dyn_smem;
  shared_memory.assign(dyn_smem + kGuardBytes, kPoison);
  blockIdx.x = bx;
  blockIdx.y = by;
  blockIdx.z = 0;
  blockDim.x = tx;
  blockDim.y = ty;
  blockDim.z = 1;
  for (int i = 0; i < n; ++i) {
    Thread& t = threads[i];
    t.stack.resize(kStackBytes);
    t.state = State::kRun;
    t.op = Collective::kNone;
    t.open_group.clear();
    t.committed.clear();
    t.x = i % tx;
    t.y = i / tx;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack.data();
    t.context.uc_stack.ss_size = t.stack.size();
    t.context.uc_link = nullptr;
    makecontext(&t.context, thread_entry, 0);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  for (;;) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      if (threads[i].state != State::kRun) continue;
      current = i;
      threadIdx.x = threads[i].x;
      threadIdx.y = threads[i].y;
      threadIdx.z = 0;
      swapcontext(&scheduler_context, &threads[i].context);
    }
    int done = 0, at_barrier = 0;
    for (const Thread& t : threads) {
      done += t.state == State::kDone;
      at_barrier += t.state == State::kAtBarrier;
    }
    if (done == n) break;
    bool progress = false;
    for (int first = 0; first < n; first += 32) {
      const int lanes = std::min(32, n - first);
      int waiting = 0, exited = 0;
      for (int l = 0; l < lanes; ++l) {
        waiting += threads[first + l].state == State::kAtCollective;
        exited += threads[first + l].state == State::kDone;
      }
      if (waiting == 0 || waiting + exited < lanes) continue;
      if (exited) {
        emu_report("warp collective after some lanes exited");
        return false;
      }
      if (!resolve_collective(first, lanes)) return false;
      progress = true;
    }
    if (!progress && at_barrier > 0) {
      if (at_barrier + done < n) {
        emu_report("deadlock: threads wait at a barrier while others wait at a warp collective");
        return false;
      }
      if (done > 0) {
        emu_report("__syncthreads after some threads of the CTA exited");
        return false;
      }
      for (Thread& t : threads) t.state = State::kRun;
      progress = true;
    }
    if (!progress) {
      emu_report("deadlock: no thread can proceed");
      return false;
    }
  }
  for (size_t i = shared_bytes; i < shared_memory.size(); ++i)
    if (shared_memory[i] != kPoison) {
      emu_report("write past the end of the dynamic shared memory (more than the launch's size is used)");
      break;
    }
  for (const Thread& t : threads) {
    bool pending = !t.open_group.empty();
    for (const auto& group : t.committed) pending = pending || !group.empty();  // empty commits are legal
    if (pending) {
      emu_report("a thread exited with cp.async copies it never waited for");
      break;
    }
  }
  return true;
}
