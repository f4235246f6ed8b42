// A fake NVIDIA driver (libcuda.so.1) on host memory, for running
// tools/gpu-check and hotboot's GPU paths on a machine without a GPU. It
// implements every symbol hotboot's two loaders resolve (host/src/cuda_driver.cpp,
// kernels/src/gpu_device_cuda.cpp) with the driver's ABI, and nothing else:
// no kernel loading or launch (cuModule*, cuLaunchKernel), and no
// cuGetProcAddress: the CUDA runtime (cudart_static in hotboot-server) finds none
// here, reports no usable device, and the reference server serves on the CPU
// (--device auto), as on a host whose driver is too old.
//
//   devices     HOTBOOT_FAKE_CUDA_DEVICES (default 1, at most 8) of
//               "NVIDIA H200 (fake)", 143771 MiB, compute capability 9.0,
//               UUID GPU-fa4ec0da-0000-4000-8000-0000000000NN (NN: the
//               ordinal, two hex digits)
//   VMM         reserve: an inaccessible anonymous mapping; cuMemCreate: a
//               memfd (so cuMemExportToShareableHandle gives a real fd that
//               another process imports and maps: the same pages); map:
//               the memfd mapped MAP_FIXED into the reservation; set access:
//               mprotect. A device pointer is a host address: copies are
//               memcpy, bounds-checked against what is mapped and accessible.
//   host        cuMemHostAlloc: page-aligned memory; cuMemHostRegister
//               refuses overlapping registrations, as the driver does.
//   streams     copies are synchronous; events and synchronisation succeed.
//   checkpoint  a per-pid state machine (running -> locked -> checkpointed ->
//               locked -> running) in files under HOTBOOT_FAKE_CUDA_DIR,
//               shared by every process that loads the fake (build, restore
//               and bench run in different processes than the server). A
//               CUDA process is one whose /proc/<pid>/comm is listed in
//               HOTBOOT_FAKE_CUDA_COMMS (comma separated). A checkpointed
//               process that comes back as a new one (CRIU-restored) is
//               CHECKPOINTED, as the driver sees a restored process: the
//               checkpoint marks the process image (HOTBOOT_FAKE_CUDA_MARK,
//               see WriteMark), so this holds under any PID; any other listed
//               process starts RUNNING. Each one not checkpointed holds
//               HOTBOOT_FAKE_CUDA_PROC_MIB (default 2048) of the device's
//               memory, which cuMemGetInfo reports used.
//               Each lock/checkpoint/restore/unlock asked for is appended to
//               calls.log there: "<call> <pid> <CUresult>".
//   faults      HOTBOOT_FAKE_CUDA_FAIL: comma-separated call names (e.g.
//               "cuCheckpointProcessLock,cuMemCreate") that return
//               CUDA_ERROR_UNKNOWN (999).
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct {
  int type;
  int id;
} MemLocation;
typedef struct {
  int type;
  int requested_handle_types;
  MemLocation location;
  void* win32_metadata;
  struct {
    unsigned char compression_type;
    unsigned char gpu_direct_rdma_capable;
    unsigned short usage;
    unsigned char reserved[4];
  } flags;
} MemAllocationProp;
typedef struct {
  MemLocation location;
  int flags;
} MemAccessDesc;
typedef struct {
  char bytes[16];
} CuUuid;
typedef struct {
  CuUuid old_uuid, new_uuid;
} GpuPair;
typedef struct {
  unsigned int timeout_ms;
  unsigned int reserved0;
  uint64_t reserved1[7];
} LockArgs;
typedef struct {
  uint64_t reserved[8];
} CheckpointArgs;
typedef struct {
  GpuPair* pairs;
  unsigned int pair_count;
  char reserved[52 - sizeof(GpuPair*)];
  uint64_t reserved1;
} RestoreArgs;
typedef struct {
  uint64_t reserved[8];
} UnlockArgs;

_Static_assert(sizeof(MemAllocationProp) == 32, "CUmemAllocationProp layout");
_Static_assert(sizeof(LockArgs) == 64 && sizeof(RestoreArgs) == 64 && sizeof(GpuPair) == 32, "checkpoint args");
// The layouts mirror the loaders' (host/src/cuda_driver.cpp,
// kernels/src/gpu_device_cuda.cpp), which check theirs against cuda.h when the
// toolkit is present; cuda.h itself is not included here, as its prototypes
// use types (enums, opaque structs) this file spells as the ABI's ints.

enum {
  kSuccess = 0,
  kInvalidValue = 1,
  kOutOfMemory = 2,
  kNotInitialized = 3,
  kNoDevice = 100,
  kInvalidDevice = 101,
  kInvalidContext = 201,
  kInvalidHandle = 400,
  kIllegalState = 401,
  kNotFound = 500,
  kAlreadyRegistered = 712,
  kNotRegistered = 713,
  kNotSupported = 801,
  kUnknown = 999,
};
enum { kStateRunning = 0, kStateLocked = 1, kStateCheckpointed = 2 };
enum { kMaxDevices = 8, kMaxHandles = 4096, kMaxRanges = 4096, kMaxRegistered = 1024 };
static const size_t kGranularity = 2u << 20;
static const unsigned long long kTotalBytes = 143771ull << 20;  // nvidia-smi's H200 figure

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int initialized;

static int Fails(const char* call) {
  const char* list = getenv("HOTBOOT_FAKE_CUDA_FAIL");
  if (!list) return 0;
  const size_t n = strlen(call);
  for (const char* p = list; (p = strstr(p, call)) != NULL; p += n) {
    const int starts = p == list || p[-1] == ',';
    const int ends = p[n] == '\0' || p[n] == ',';
    if (starts && ends) return 1;
  }
  return 0;
}
#define FAULT(call)                  \
  do {                               \
    if (Fails(call)) return kUnknown; \
  } while (0)

static int DeviceCount(void) {
  const char* s = getenv("HOTBOOT_FAKE_CUDA_DEVICES");
  if (!s || !*s) return 1;
  char* end = NULL;
  const long n = strtol(s, &end, 10);
  if (*end != '\0' || n < 0) return 0;
  return n > kMaxDevices ? kMaxDevices : (int)n;
}

// ---- errors, init, devices ------------------------------------------------

EXPORT CUresult cuGetErrorName(CUresult r, const char** name) {
  static const struct {
    int code;
    const char* name;
  } kNames[] = {{kSuccess, "CUDA_SUCCESS"},
                {kInvalidValue, "CUDA_ERROR_INVALID_VALUE"},
                {kOutOfMemory, "CUDA_ERROR_OUT_OF_MEMORY"},
                {kNotInitialized, "CUDA_ERROR_NOT_INITIALIZED"},
                {kNoDevice, "CUDA_ERROR_NO_DEVICE"},
                {kInvalidDevice, "CUDA_ERROR_INVALID_DEVICE"},
                {kInvalidContext, "CUDA_ERROR_INVALID_CONTEXT"},
                {kInvalidHandle, "CUDA_ERROR_INVALID_HANDLE"},
                {kIllegalState, "CUDA_ERROR_ILLEGAL_STATE"},
                {kNotFound, "CUDA_ERROR_NOT_FOUND"},
                {kAlreadyRegistered, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"},
                {kNotRegistered, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"},
                {kNotSupported, "CUDA_ERROR_NOT_SUPPORTED"},
                {kUnknown, "CUDA_ERROR_UNKNOWN"}};
  if (!name) return kInvalidValue;
  for (size_t i = 0; i < sizeof kNames / sizeof kNames[0]; ++i) {
    if (kNames[i].code == r) {
      *name = kNames[i].name;
      return kSuccess;
    }
  }
  *name = NULL;
  return kInvalidValue;
}

EXPORT CUresult cuGetErrorString(CUresult r, const char** str) { return cuGetErrorName(r, str); }

EXPORT CUresult cuInit(unsigned flags) {
  FAULT("cuInit");
  if (flags != 0) return kInvalidValue;
  if (DeviceCount() == 0) return kNoDevice;
  __atomic_store_n(&initialized, 1, __ATOMIC_RELEASE);
  return kSuccess;
}

#define NEED_INIT()                                                      \
  do {                                                                   \
    if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE)) return kNotInitialized; \
  } while (0)

EXPORT CUresult cuDriverGetVersion(int* v) {
  if (!v) return kInvalidValue;
  *v = 13000;
  return kSuccess;
}

EXPORT CUresult cuDeviceGetCount(int* n) {
  NEED_INIT();
  if (!n) return kInvalidValue;
  *n = DeviceCount();
  return kSuccess;
}

EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  NEED_INIT();
  if (!d) return kInvalidValue;
  if (ordinal < 0 || ordinal >= DeviceCount()) return kInvalidDevice;
  *d = ordinal;
  return kSuccess;
}

static int ValidDevice(CUdevice d) { return d >= 0 && d < DeviceCount(); }

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
  NEED_INIT();
  if (!name || len <= 0) return kInvalidValue;
  if (!ValidDevice(d)) return kInvalidDevice;
  snprintf(name, (size_t)len, "%s", "NVIDIA H200 (fake)");
  return kSuccess;
}

static void UuidOf(CUdevice d, CuUuid* u) {
  static const unsigned char base[16] = {0xfa, 0x4e, 0xc0, 0xda, 0x00, 0x00, 0x40, 0x00,
                                         0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  memcpy(u->bytes, base, 16);
  u->bytes[15] = (char)d;
}

EXPORT CUresult cuDeviceGetUuid_v2(CuUuid* u, CUdevice d) {
  NEED_INIT();
  if (!u) return kInvalidValue;
  if (!ValidDevice(d)) return kInvalidDevice;
  UuidOf(d, u);
  return kSuccess;
}
EXPORT CUresult cuDeviceGetUuid(CuUuid* u, CUdevice d) { return cuDeviceGetUuid_v2(u, d); }

EXPORT CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
  NEED_INIT();
  if (!v) return kInvalidValue;
  if (!ValidDevice(d)) return kInvalidDevice;
  switch (attr) {
    case 75: *v = 9; return kSuccess;    // compute capability major
    case 76: *v = 0; return kSuccess;    // minor
    case 16: *v = 132; return kSuccess;  // multiprocessors
    case 102: *v = 1; return kSuccess;   // virtual memory management
    case 103: *v = 1; return kSuccess;   // POSIX fd shareable handles
    default: *v = 0; return kSuccess;
  }
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
  NEED_INIT();
  if (!bytes) return kInvalidValue;
  if (!ValidDevice(d)) return kInvalidDevice;
  *bytes = kTotalBytes;
  return kSuccess;
}

// ---- contexts: one primary context per device, a per-thread stack ---------

static char primary[kMaxDevices];
static int primary_refs[kMaxDevices];
static __thread CUcontext ctx_stack[16];
static __thread int ctx_depth;

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
  NEED_INIT();
  FAULT("cuDevicePrimaryCtxRetain");
  if (!c) return kInvalidValue;
  if (!ValidDevice(d)) return kInvalidDevice;
  pthread_mutex_lock(&mu);
  ++primary_refs[d];
  pthread_mutex_unlock(&mu);
  *c = &primary[d];
  return kSuccess;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
  NEED_INIT();
  if (!ValidDevice(d)) return kInvalidDevice;
  pthread_mutex_lock(&mu);
  const int ok = primary_refs[d] > 0;
  if (ok) --primary_refs[d];
  pthread_mutex_unlock(&mu);
  return ok ? kSuccess : kInvalidContext;
}

static int ValidContext(CUcontext c) {
  return (char*)c >= primary && (char*)c < primary + DeviceCount();
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext c) {
  NEED_INIT();
  if (!ValidContext(c)) return kInvalidContext;
  if (ctx_depth == (int)(sizeof ctx_stack / sizeof ctx_stack[0])) return kOutOfMemory;
  ctx_stack[ctx_depth++] = c;
  return kSuccess;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* c) {
  NEED_INIT();
  if (ctx_depth == 0) return kInvalidContext;
  CUcontext top = ctx_stack[--ctx_depth];
  if (c) *c = top;
  return kSuccess;
}

static int CurrentDevice(void) {
  if (ctx_depth == 0) return -1;
  return (int)((char*)ctx_stack[ctx_depth - 1] - primary);
}

#define NEED_CONTEXT()                          \
  do {                                          \
    NEED_INIT();                                \
    if (CurrentDevice() < 0) return kInvalidContext; \
  } while (0)

// ---- the checkpoint API's per-pid state, in files -------------------------

static unsigned long long ProcMib(void) {
  const char* s = getenv("HOTBOOT_FAKE_CUDA_PROC_MIB");
  return s && *s ? strtoull(s, NULL, 10) : 2048;
}

// /proc/<pid>/comm is one of HOTBOOT_FAKE_CUDA_COMMS.
static int IsCudaComm(int pid) {
  const char* list = getenv("HOTBOOT_FAKE_CUDA_COMMS");
  if (!list || !*list || pid <= 0) return 0;
  char path[64], comm[64] = {0};
  snprintf(path, sizeof path, "/proc/%d/comm", pid);
  FILE* f = fopen(path, "re");
  if (!f) return 0;
  const int got = fgets(comm, sizeof comm, f) != NULL;
  fclose(f);
  if (!got) return 0;
  comm[strcspn(comm, "\n")] = '\0';
  const size_t n = strlen(comm);
  for (const char* p = list; (p = strstr(p, comm)) != NULL; p += n ? n : 1) {
    if (n && (p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return 1;
  }
  return 0;
}

// Field 22 of /proc/<pid>/stat: a new process under a reused pid (a CRIU
// restore) has another start time. 0: gone.
static unsigned long long StartTime(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = strrchr(buf, ')');
  if (!p) return 0;
  // After ") ": state is field 3; start time is field 22, 19 fields on.
  int field = 2;
  for (++p; *p && field < 22; ++p) {
    if (*p == ' ') ++field;
  }
  return strtoull(p, NULL, 10);
}

static const char* StateDir(void) {
  const char* d = getenv("HOTBOOT_FAKE_CUDA_DIR");
  return d && *d ? d : NULL;
}

// The state files, under one flock: live-<pid> "state starttime" for the
// process now under that pid, ckpt-<pid> once it was checkpointed.
static int LockDir(const char* dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/lock", dir);
  mkdir(dir, 0700);
  const int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int ReadLive(const char* dir, int pid, int* state, unsigned long long* start) {
  char path[4096];
  snprintf(path, sizeof path, "%s/live-%d", dir, pid);
  FILE* f = fopen(path, "re");
  if (!f) return 0;
  const int ok = fscanf(f, "%d %llu", state, start) == 2;
  fclose(f);
  return ok;
}

static int WriteFile(const char* dir, const char* kind, int pid, const char* text) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/%s-%d", dir, kind, pid);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE* f = fopen(tmp, "we");
  if (!f) return -1;
  fputs(text, f);
  if (fclose(f) != 0) return -1;
  return rename(tmp, path);
}

static int HasCheckpoint(const char* dir, int pid) {
  char path[4096];
  snprintf(path, sizeof path, "%s/ckpt-%d", dir, pid);
  return access(path, F_OK) == 0;
}

// The checkpoint travels in the process image, as the driver's does: a
// process with HOTBOOT_FAKE_CUDA_MARK=<16 characters> in its environment gets
// "ckpt" and 12 hex digits written over that value in its memory
// (/proc/<pid>/mem) when checkpointed, which CRIU dumps and restores with the
// rest; a mark-<value> file says the value is a checkpoint's. A restored
// process is then CHECKPOINTED under any PID (a PID namespace, another host
// PID). Without the variable, only a process that comes back under the same
// PID is (ckpt-<pid>).
static const char kMarkVar[] = "HOTBOOT_FAKE_CUDA_MARK=";
enum { kMarkLen = 16 };

// The mark's value in pid's environment and the address it is at; 0: none.
static int ReadMark(int pid, char value[kMarkLen + 1], unsigned long long* addr) {
  char path[64], buf[65536];
  snprintf(path, sizeof path, "/proc/%d/environ", pid);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t n = 0;
  for (ssize_t r; n < sizeof buf && (r = read(fd, buf + n, sizeof buf - n)) > 0;) n += (size_t)r;
  close(fd);
  const size_t vlen = sizeof kMarkVar - 1;
  for (size_t i = 0; i + vlen + kMarkLen <= n;) {
    const size_t len = strnlen(buf + i, n - i);
    if (len == vlen + kMarkLen && memcmp(buf + i, kMarkVar, vlen) == 0) {
      memcpy(value, buf + i + vlen, kMarkLen);
      value[kMarkLen] = '\0';
      // env_start: field 50 of /proc/<pid>/stat.
      snprintf(path, sizeof path, "/proc/%d/stat", pid);
      char st[1024];
      const int sfd = open(path, O_RDONLY | O_CLOEXEC);
      if (sfd < 0) return 0;
      const ssize_t m = read(sfd, st, sizeof st - 1);
      close(sfd);
      if (m <= 0) return 0;
      st[m] = '\0';
      const char* p = strrchr(st, ')');
      int field = 2;
      for (p = p ? p + 1 : st; *p && field < 50; ++p) {
        if (*p == ' ') ++field;
      }
      *addr = strtoull(p, NULL, 10) + i + vlen;
      return *addr > i + vlen;
    }
    i += len + 1;
  }
  return 0;
}

static int HasFile(const char* dir, const char* kind, const char* name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s-%s", dir, kind, name);
  return access(path, F_OK) == 0;
}

// Marks pid's image as checkpointed (when it carries the variable).
static int WriteMark(const char* dir, int pid) {
  char value[kMarkLen + 1];
  unsigned long long addr = 0;
  if (!ReadMark(pid, value, &addr)) return 0;
  static unsigned counter;
  char mark[kMarkLen + 1];
  snprintf(mark, sizeof mark, "ckpt%04x%08x", (unsigned)(getpid() & 0xffff),
           (unsigned)time(NULL) ^ (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) << 24));
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  const int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const ssize_t w = pwrite(fd, mark, kMarkLen, (off_t)addr);
  close(fd);
  if (w != kMarkLen) return -1;
  char name[80];
  snprintf(name, sizeof name, "%s", mark);
  char file[4200];
  snprintf(file, sizeof file, "%s/mark-%s", dir, name);
  FILE* f = fopen(file, "we");
  if (!f) return -1;
  fprintf(f, "%d\n", pid);
  return fclose(f);
}

// The state of a listed process, its live record made on first sight.
// Called with the directory locked. -1: not a CUDA process.
static int StateOf(const char* dir, int pid) {
  if (!IsCudaComm(pid)) return -1;
  const unsigned long long now = StartTime(pid);
  if (now == 0) return -1;
  int state = 0;
  unsigned long long start = 0;
  if (ReadLive(dir, pid, &state, &start) && start == now) return state;
  char value[kMarkLen + 1];
  unsigned long long addr = 0;
  if (ReadMark(pid, value, &addr)) {
    state = HasFile(dir, "mark", value) ? kStateCheckpointed : kStateRunning;
  } else {
    state = HasCheckpoint(dir, pid) ? kStateCheckpointed : kStateRunning;
  }
  char text[64];
  snprintf(text, sizeof text, "%d %llu\n", state, now);
  return WriteFile(dir, "live", pid, text) == 0 ? state : -1;
}

// calls.log: "<call> <pid> <result>" per state change asked for, for tests
// and for reading what a run did.
static void LogCall(const char* dir, const char* call, int pid, CUresult r) {
  char path[4096];
  snprintf(path, sizeof path, "%s/calls.log", dir);
  FILE* f = fopen(path, "ae");
  if (!f) return;
  fprintf(f, "%s %d %d\n", call, pid, r);
  fclose(f);
}

static CUresult Move(int pid, int from, int to, const char* call) {
  FAULT(call);
  const char* dir = StateDir();
  if (!dir) return kNotFound;
  const int lock = LockDir(dir);
  if (lock < 0) return kUnknown;
  CUresult r = kSuccess;
  const int state = StateOf(dir, pid);
  if (state < 0) {
    r = kNotFound;
  } else if (state != from) {
    r = kIllegalState;
  } else {
    char text[64];
    snprintf(text, sizeof text, "%d %llu\n", to, StartTime(pid));
    if (WriteFile(dir, "live", pid, text) != 0) r = kUnknown;
    if (r == kSuccess && to == kStateCheckpointed &&
        (WriteFile(dir, "ckpt", pid, "checkpointed\n") != 0 || WriteMark(dir, pid) != 0))
      r = kUnknown;
  }
  LogCall(dir, call, pid, r);
  close(lock);
  return r;
}

EXPORT CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int* tid) {
  FAULT("cuCheckpointProcessGetRestoreThreadId");
  if (!tid) return kInvalidValue;
  const char* dir = StateDir();
  if (!dir) return kNotFound;
  const int lock = LockDir(dir);
  if (lock < 0) return kUnknown;
  const int state = StateOf(dir, pid);
  close(lock);
  if (state < 0) return kNotFound;
  *tid = pid;
  return kSuccess;
}

EXPORT CUresult cuCheckpointProcessGetState(int pid, int* out) {
  FAULT("cuCheckpointProcessGetState");
  if (!out) return kInvalidValue;
  const char* dir = StateDir();
  if (!dir) return kNotFound;
  const int lock = LockDir(dir);
  if (lock < 0) return kUnknown;
  const int state = StateOf(dir, pid);
  close(lock);
  if (state < 0) return kNotFound;
  *out = state;
  return kSuccess;
}

EXPORT CUresult cuCheckpointProcessLock(int pid, LockArgs* a) {
  if (a && (a->reserved0 != 0)) return kInvalidValue;
  return Move(pid, kStateRunning, kStateLocked, "cuCheckpointProcessLock");
}

EXPORT CUresult cuCheckpointProcessCheckpoint(int pid, CheckpointArgs* a) {
  (void)a;
  return Move(pid, kStateLocked, kStateCheckpointed, "cuCheckpointProcessCheckpoint");
}

EXPORT CUresult cuCheckpointProcessRestore(int pid, RestoreArgs* a) {
  if (a && a->pair_count > 0) {
    // Each pair must name one of this host's GPUs as the new one.
    if (!a->pairs) return kInvalidValue;
    for (unsigned i = 0; i < a->pair_count; ++i) {
      int found = 0;
      for (int d = 0; d < DeviceCount(); ++d) {
        CuUuid u;
        UuidOf(d, &u);
        if (memcmp(u.bytes, a->pairs[i].new_uuid.bytes, 16) == 0) found = 1;
      }
      if (!found) return kInvalidValue;
    }
  }
  return Move(pid, kStateCheckpointed, kStateLocked, "cuCheckpointProcessRestore");
}

EXPORT CUresult cuCheckpointProcessUnlock(int pid, UnlockArgs* a) {
  (void)a;
  return Move(pid, kStateLocked, kStateRunning, "cuCheckpointProcessUnlock");
}

// ---- memory: VMM over memfds, bounds-checked copies -----------------------

typedef struct {
  int fd;  // -1: free slot
  size_t size;
  int device;
  int shareable;  // made with requestedHandleTypes POSIX fd (or imported)
} Handle;
typedef struct {
  uintptr_t base;
  size_t size;
  int reserved;   // a reservation (vs a mapping inside one)
  int accessible;  // mapping: after cuMemSetAccess
} Range;

static Handle handles[kMaxHandles];
static Range ranges[kMaxRanges];
static int nranges;
static unsigned long long created_bytes[kMaxDevices];
static struct {
  uintptr_t p;
  size_t n;
} registered[kMaxRegistered];
static int nregistered;

// Handles are 1-based indices: 0 is never a valid handle.
static Handle* HandleOf(CUmemGenericAllocationHandle h) {
  if (h == 0 || h > kMaxHandles || handles[h - 1].size == 0) return NULL;
  return &handles[h - 1];
}

static CUmemGenericAllocationHandle NewHandle(int fd, size_t size, int device, int shareable) {
  for (int i = 0; i < kMaxHandles; ++i) {
    if (handles[i].size == 0) {
      handles[i].fd = fd;
      handles[i].size = size;
      handles[i].device = device;
      handles[i].shareable = shareable;
      return (CUmemGenericAllocationHandle)(i + 1);
    }
  }
  return 0;
}

static int AddRange(uintptr_t base, size_t size, int reserved) {
  if (nranges == kMaxRanges) return -1;
  ranges[nranges].base = base;
  ranges[nranges].size = size;
  ranges[nranges].reserved = reserved;
  ranges[nranges].accessible = 0;
  ++nranges;
  return 0;
}

static int FindRange(uintptr_t base, size_t size, int reserved) {
  for (int i = 0; i < nranges; ++i) {
    if (ranges[i].base == base && ranges[i].size == size && ranges[i].reserved == reserved) return i;
  }
  return -1;
}

static void DropRange(int i) { ranges[i] = ranges[--nranges]; }

// [p, p+n) inside one reservation.
static int InReservation(uintptr_t p, size_t n) {
  for (int i = 0; i < nranges; ++i) {
    if (ranges[i].reserved && p >= ranges[i].base && n <= ranges[i].size && p - ranges[i].base <= ranges[i].size - n)
      return 1;
  }
  return 0;
}

// [p, p+n) covered by accessible mappings (adjacent ones may join).
static int Accessible(uintptr_t p, size_t n) {
  while (n > 0) {
    int hit = -1;
    for (int i = 0; i < nranges; ++i) {
      if (!ranges[i].reserved && ranges[i].accessible && p >= ranges[i].base && p - ranges[i].base < ranges[i].size) {
        hit = i;
        break;
      }
    }
    if (hit < 0) return 0;
    const size_t left = ranges[hit].size - (p - ranges[hit].base);
    const size_t step = left < n ? left : n;
    p += step;
    n -= step;
  }
  return 1;
}

EXPORT CUresult cuMemGetAllocationGranularity(size_t* g, const MemAllocationProp* prop, int option) {
  NEED_INIT();
  if (!g || !prop || (option != 0 && option != 1)) return kInvalidValue;
  if (prop->type != 1 || prop->location.type != 1 || !ValidDevice(prop->location.id)) return kInvalidValue;
  *g = kGranularity;
  return kSuccess;
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                    unsigned long long flags) {
  NEED_INIT();
  FAULT("cuMemAddressReserve");
  if (!ptr || size == 0 || size % kGranularity != 0 || flags != 0) return kInvalidValue;
  if (alignment == 0) alignment = kGranularity;
  if (alignment % kGranularity != 0 || size > (1ull << 46)) return kInvalidValue;
  // The address is a hint, as for the driver: taken when free and aligned.
  if (addr != 0 && addr % alignment == 0) {
    void* at = mmap((void*)(uintptr_t)addr, size, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (at != MAP_FAILED && (uintptr_t)at == addr) {
      pthread_mutex_lock(&mu);
      const int r = AddRange(addr, size, 1);
      pthread_mutex_unlock(&mu);
      if (r == 0) {
        *ptr = addr;
        return kSuccess;
      }
    }
    if (at != MAP_FAILED) munmap(at, size);
  }
  // Over-reserve to align, then trim the ends.
  const size_t span = size + alignment;
  void* raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return kOutOfMemory;
  const uintptr_t base = ((uintptr_t)raw + alignment - 1) / alignment * alignment;
  if (base > (uintptr_t)raw) munmap(raw, base - (uintptr_t)raw);
  const uintptr_t end = (uintptr_t)raw + span;
  if (end > base + size) munmap((void*)(base + size), end - (base + size));
  pthread_mutex_lock(&mu);
  const int r = AddRange(base, size, 1);
  pthread_mutex_unlock(&mu);
  if (r != 0) {
    munmap((void*)base, size);
    return kOutOfMemory;
  }
  *ptr = (CUdeviceptr)base;
  return kSuccess;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  NEED_INIT();
  pthread_mutex_lock(&mu);
  const int i = FindRange((uintptr_t)ptr, size, 1);
  CUresult r = kInvalidValue;
  if (i >= 0) {
    // The driver refuses to free a range that still has mappings.
    int mapped = 0;
    for (int j = 0; j < nranges; ++j) {
      if (!ranges[j].reserved && ranges[j].base >= ptr && ranges[j].base - ptr < size) mapped = 1;
    }
    if (mapped) {
      r = kIllegalState;
    } else {
      DropRange(i);
      munmap((void*)(uintptr_t)ptr, size);
      r = kSuccess;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* h, size_t size, const MemAllocationProp* prop,
                            unsigned long long flags) {
  NEED_INIT();
  FAULT("cuMemCreate");
  if (!h || !prop || size == 0 || size % kGranularity != 0 || flags != 0) return kInvalidValue;
  if (prop->type != 1 || prop->location.type != 1 || !ValidDevice(prop->location.id)) return kInvalidValue;
  const int dev = prop->location.id;
  if (created_bytes[dev] + size > kTotalBytes) return kOutOfMemory;
  const int fd = memfd_create("fake-cuda-device-memory", MFD_CLOEXEC);
  if (fd < 0) return kOutOfMemory;
  if (ftruncate(fd, (off_t)size) != 0) {
    close(fd);
    return kOutOfMemory;
  }
  pthread_mutex_lock(&mu);
  const CUmemGenericAllocationHandle nh = NewHandle(fd, size, dev, (prop->requested_handle_types & 1) != 0);
  if (nh) created_bytes[dev] += size;
  pthread_mutex_unlock(&mu);
  if (!nh) {
    close(fd);
    return kOutOfMemory;
  }
  *h = nh;
  return kSuccess;
}

// The memfd keeps the pages while a mapping holds them: release closes it.
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  NEED_INIT();
  pthread_mutex_lock(&mu);
  Handle* hd = HandleOf(h);
  CUresult r = kInvalidValue;
  if (hd) {
    if (created_bytes[hd->device] >= hd->size) created_bytes[hd->device] -= hd->size;
    close(hd->fd);
    hd->fd = -1;
    hd->size = 0;
    r = kSuccess;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                         unsigned long long flags) {
  NEED_INIT();
  FAULT("cuMemMap");
  if (size == 0 || size % kGranularity != 0 || ptr % kGranularity != 0 || flags != 0 || offset != 0)
    return kInvalidValue;
  pthread_mutex_lock(&mu);
  CUresult r = kSuccess;
  Handle* hd = HandleOf(h);
  if (!hd || size > hd->size) {
    r = kInvalidValue;
  } else if (!InReservation((uintptr_t)ptr, size)) {
    r = kInvalidValue;
  } else {
    for (int j = 0; j < nranges; ++j) {
      if (!ranges[j].reserved && ranges[j].base < ptr + size && ptr < ranges[j].base + ranges[j].size) r = kInvalidValue;
    }
  }
  if (r == kSuccess) {
    void* p = mmap((void*)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, hd->fd, 0);
    if (p == MAP_FAILED || AddRange((uintptr_t)ptr, size, 0) != 0) r = kOutOfMemory;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  NEED_INIT();
  pthread_mutex_lock(&mu);
  const int i = FindRange((uintptr_t)ptr, size, 0);
  CUresult r = kInvalidValue;
  if (i >= 0) {
    DropRange(i);
    // Back to an inaccessible part of its reservation.
    void* p = mmap((void*)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    r = p == MAP_FAILED ? kUnknown : kSuccess;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const MemAccessDesc* desc, size_t count) {
  NEED_INIT();
  if (!desc || count == 0 || size == 0) return kInvalidValue;
  for (size_t k = 0; k < count; ++k) {
    if (desc[k].location.type != 1 || !ValidDevice(desc[k].location.id) || desc[k].flags < 0 || desc[k].flags > 3)
      return kInvalidValue;
  }
  const int prot = desc[count - 1].flags == 3 ? PROT_READ | PROT_WRITE : desc[count - 1].flags == 1 ? PROT_READ : PROT_NONE;
  pthread_mutex_lock(&mu);
  // Every byte of the range must be mapped.
  CUresult r = kSuccess;
  for (uintptr_t p = (uintptr_t)ptr; p < ptr + size && r == kSuccess;) {
    int hit = -1;
    for (int i = 0; i < nranges; ++i) {
      if (!ranges[i].reserved && p >= ranges[i].base && p - ranges[i].base < ranges[i].size) hit = i;
    }
    if (hit < 0) {
      r = kInvalidValue;
      break;
    }
    p = ranges[hit].base + ranges[hit].size;
  }
  if (r == kSuccess && mprotect((void*)(uintptr_t)ptr, size, prot) != 0) r = kUnknown;
  if (r == kSuccess) {
    for (int i = 0; i < nranges; ++i) {
      if (!ranges[i].reserved && ranges[i].base >= ptr && ranges[i].base - ptr < size) ranges[i].accessible = prot != PROT_NONE;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemExportToShareableHandle(void* shareable, CUmemGenericAllocationHandle h, int type,
                                             unsigned long long flags) {
  NEED_INIT();
  FAULT("cuMemExportToShareableHandle");
  if (!shareable || flags != 0) return kInvalidValue;
  if (type != 1) return kNotSupported;  // POSIX file descriptors only
  pthread_mutex_lock(&mu);
  Handle* hd = HandleOf(h);
  // As the driver: only memory created to be shared as a POSIX fd exports.
  const int ok = hd && hd->shareable;
  const int fd = ok ? fcntl(hd->fd, F_DUPFD_CLOEXEC, 0) : -1;
  pthread_mutex_unlock(&mu);
  if (!ok) return kInvalidValue;
  if (fd < 0) return kOutOfMemory;
  *(int*)shareable = fd;
  return kSuccess;
}

// The fd is the caller's (it may close it after); the handle keeps a dup.
EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* h, void* os_handle, int type) {
  NEED_INIT();
  FAULT("cuMemImportFromShareableHandle");
  if (!h) return kInvalidValue;
  if (type != 1) return kNotSupported;
  const int src = (int)(intptr_t)os_handle;
  struct stat st;
  if (src < 0 || fstat(src, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
      (size_t)st.st_size % kGranularity != 0)
    return kInvalidValue;
  const int fd = fcntl(src, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return kOutOfMemory;
  pthread_mutex_lock(&mu);
  const CUmemGenericAllocationHandle nh = NewHandle(fd, (size_t)st.st_size, 0, 1);
  pthread_mutex_unlock(&mu);
  if (!nh) {
    close(fd);
    return kOutOfMemory;
  }
  *h = nh;
  return kSuccess;
}

// What the listed CUDA processes hold: each live, not checkpointed one
// (its record's start time still the process's) holds HOTBOOT_FAKE_CUDA_PROC_MIB.
static unsigned long long ProcessBytes(void) {
  const char* dir = StateDir();
  if (!dir) return 0;
  const int lock = LockDir(dir);
  if (lock < 0) return 0;
  unsigned long long used = 0;
  DIR* d = opendir(dir);
  for (struct dirent* e; d && (e = readdir(d)) != NULL;) {
    int pid = 0, state = 0;
    unsigned long long start = 0;
    if (sscanf(e->d_name, "live-%d", &pid) != 1 || strchr(e->d_name, '.')) continue;
    if (!ReadLive(dir, pid, &state, &start) || state == kStateCheckpointed) continue;
    if (StartTime(pid) == start) used += ProcMib() << 20;
  }
  if (d) closedir(d);
  close(lock);
  return used;
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total_b) {
  NEED_CONTEXT();
  if (!free_b || !total_b) return kInvalidValue;
  const int dev = CurrentDevice();
  unsigned long long used = dev == 0 ? ProcessBytes() : 0;
  pthread_mutex_lock(&mu);
  used += created_bytes[dev];
  pthread_mutex_unlock(&mu);
  *total_b = kTotalBytes;
  *free_b = used >= kTotalBytes ? 0 : kTotalBytes - used;
  return kSuccess;
}

// ---- host memory ------------------------------------------------------------

EXPORT CUresult cuMemHostAlloc(void** p, size_t size, unsigned flags) {
  NEED_CONTEXT();
  FAULT("cuMemHostAlloc");
  if (!p || size == 0 || (flags & ~0xfu) != 0) return kInvalidValue;
  void* m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return kOutOfMemory;
  pthread_mutex_lock(&mu);
  int ok = nregistered < kMaxRegistered;
  if (ok) {
    registered[nregistered].p = (uintptr_t)m;
    registered[nregistered].n = size;
    ++nregistered;
  }
  pthread_mutex_unlock(&mu);
  if (!ok) {
    munmap(m, size);
    return kOutOfMemory;
  }
  *p = m;
  return kSuccess;
}

EXPORT CUresult cuMemAllocHost_v2(void** p, size_t size) { return cuMemHostAlloc(p, size, 0); }

static int FindRegistered(uintptr_t p) {
  for (int i = 0; i < nregistered; ++i) {
    if (registered[i].p == p) return i;
  }
  return -1;
}

EXPORT CUresult cuMemFreeHost(void* p) {
  NEED_INIT();
  pthread_mutex_lock(&mu);
  const int i = FindRegistered((uintptr_t)p);
  size_t n = 0;
  if (i >= 0) {
    n = registered[i].n;
    registered[i] = registered[--nregistered];
  }
  pthread_mutex_unlock(&mu);
  if (i < 0) return kInvalidValue;
  munmap(p, n);
  return kSuccess;
}

// Page-locks nothing (the fake's "device" reads host memory anyway) but keeps
// the driver's bookkeeping: overlapping registrations are refused.
EXPORT CUresult cuMemHostRegister_v2(void* p, size_t n, unsigned flags) {
  NEED_CONTEXT();
  FAULT("cuMemHostRegister");
  if (!p || n == 0 || (flags & ~0xfu) != 0) return kInvalidValue;
  const uintptr_t a = (uintptr_t)p;
  pthread_mutex_lock(&mu);
  CUresult r = kSuccess;
  for (int i = 0; i < nregistered; ++i) {
    const size_t len = registered[i].n & ~((size_t)1 << 63);
    if (registered[i].p < a + n && a < registered[i].p + len) r = kAlreadyRegistered;
  }
  if (r == kSuccess && nregistered == kMaxRegistered) r = kOutOfMemory;
  if (r == kSuccess) {
    // A negative size marks a registration (not an allocation to unmap).
    registered[nregistered].p = a;
    registered[nregistered].n = n | ((size_t)1 << 63);
    ++nregistered;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

EXPORT CUresult cuMemHostUnregister(void* p) {
  NEED_CONTEXT();
  pthread_mutex_lock(&mu);
  const int i = FindRegistered((uintptr_t)p);
  CUresult r = kNotRegistered;
  if (i >= 0 && (registered[i].n >> 63)) {
    registered[i] = registered[--nregistered];
    r = kSuccess;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

// ---- streams, events, copies (synchronous) ----------------------------------

typedef struct {
  uint32_t magic;
} Object;
enum { kStreamMagic = 0x5354524d, kEventMagic = 0x4556544d };

static CUresult NewObject(void** out, uint32_t magic) {
  Object* o = malloc(sizeof *o);
  if (!o) return kOutOfMemory;
  o->magic = magic;
  *out = o;
  return kSuccess;
}

static CUresult FreeObject(void* p, uint32_t magic) {
  Object* o = p;
  if (!o || o->magic != magic) return kInvalidHandle;
  o->magic = 0;
  free(o);
  return kSuccess;
}

// The legacy (0) and per-thread (2) default streams are valid too.
static int ValidStream(CUstream s) {
  return s == NULL || s == (CUstream)0x2 || ((Object*)s)->magic == kStreamMagic;
}

EXPORT CUresult cuStreamCreate(CUstream* s, unsigned flags) {
  NEED_CONTEXT();
  if (!s || flags > 1) return kInvalidValue;
  return NewObject(s, kStreamMagic);
}
EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
  NEED_INIT();
  return s ? FreeObject(s, kStreamMagic) : kInvalidHandle;
}
EXPORT CUresult cuStreamSynchronize(CUstream s) {
  NEED_CONTEXT();
  return ValidStream(s) ? kSuccess : kInvalidHandle;
}
EXPORT CUresult cuEventCreate(CUevent* e, unsigned flags) {
  NEED_CONTEXT();
  if (!e || flags > 0xf) return kInvalidValue;
  return NewObject(e, kEventMagic);
}
EXPORT CUresult cuEventDestroy_v2(CUevent e) {
  NEED_INIT();
  return FreeObject(e, kEventMagic);
}
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) {
  NEED_CONTEXT();
  if (!e || ((Object*)e)->magic != kEventMagic || !ValidStream(s)) return kInvalidHandle;
  return kSuccess;
}
EXPORT CUresult cuEventSynchronize(CUevent e) {
  NEED_INIT();
  return e && ((Object*)e)->magic == kEventMagic ? kSuccess : kInvalidHandle;
}
EXPORT CUresult cuEventQuery(CUevent e) { return cuEventSynchronize(e); }

static CUresult Copy(void* dst, const void* src, size_t n, uintptr_t device_side) {
  if (n == 0) return kSuccess;
  if (!dst || !src) return kInvalidValue;
  pthread_mutex_lock(&mu);
  const int ok = Accessible(device_side, n);
  pthread_mutex_unlock(&mu);
  if (!ok) return kInvalidValue;  // not mapped device memory with access set
  memcpy(dst, src, n);
  return kSuccess;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  NEED_CONTEXT();
  FAULT("cuMemcpyHtoDAsync");
  if (!ValidStream(s)) return kInvalidHandle;
  return Copy((void*)(uintptr_t)dst, src, n, (uintptr_t)dst);
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  NEED_CONTEXT();
  FAULT("cuMemcpyHtoD");
  return Copy((void*)(uintptr_t)dst, src, n, (uintptr_t)dst);
}
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  NEED_CONTEXT();
  FAULT("cuMemcpyDtoH");
  return Copy(dst, (const void*)(uintptr_t)src, n, (uintptr_t)src);
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  if (!ValidStream(s)) return kInvalidHandle;
  return cuMemcpyDtoH_v2(dst, src, n);
}

