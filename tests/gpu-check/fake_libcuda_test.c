// The fake driver itself, loaded as hotboot loads a driver (dlopen of
// libcuda.so.1 from the directory given): devices, VMM mapping and the
// bounds of copies, shareable memory that another process imports and sees
// the same bytes of, page-lock registrations that may not overlap, and the
// checkpoint API's state machine on a child process, including the mark that
// makes a process seen under a new PID checkpointed.
//
//   fake_libcuda_test DIR   (DIR holds libcuda.so.1)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*Fn)();
static void* lib;
static int failures;

static Fn Get(const char* name) {
  Fn f = (Fn)dlsym(lib, name);
  if (!f) {
    fprintf(stderr, "FAIL: libcuda.so.1 lacks %s\n", name);
    exit(1);
  }
  return f;
}
#define CU(name) ((Fn)Get(#name))
#define EXPECT(what, cond)                                  \
  do {                                                      \
    if (cond) {                                             \
      printf("ok: %s\n", what);                             \
    } else {                                                \
      fprintf(stderr, "FAIL: %s (line %d)\n", what, __LINE__); \
      ++failures;                                           \
    }                                                       \
  } while (0)

typedef struct {
  int type, handle_types, loc_type, loc_id;
  void* win32;
  unsigned char flags[8];
} Prop;
typedef struct {
  int loc_type, loc_id, flags;
} Access;

static const size_t kSize = 4u << 20;

// Until the forked child has exec'd sleep(1) (at most 5 s).
static void WaitExec(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
  for (int i = 0; i < 500; ++i) {
    char comm[32] = {0};
    FILE* f = fopen(path, "r");
    if (f) {
      if (!fgets(comm, sizeof comm, f)) comm[0] = 0;
      fclose(f);
    }
    if (strcmp(comm, "sleep\n") == 0) return;
    usleep(10000);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fake_libcuda_test DIR\n");
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/libcuda.so.1", argv[1]);
  lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "FAIL: %s\n", dlerror());
    return 1;
  }
  char dir[] = "/tmp/fake-libcuda-test.XXXXXX";
  if (!mkdtemp(dir)) return 1;
  setenv("HOTBOOT_FAKE_CUDA_DIR", dir, 1);
  setenv("HOTBOOT_FAKE_CUDA_COMMS", "sleep", 1);
  unsetenv("HOTBOOT_FAKE_CUDA_FAIL");

  int n = -1;
  EXPECT("calls before cuInit are refused", CU(cuDeviceGetCount)(&n) == 3);
  EXPECT("cuInit", CU(cuInit)(0) == 0);
  EXPECT("one device", CU(cuDeviceGetCount)(&n) == 0 && n == 1);
  char name[64] = {0};
  CU(cuDeviceGetName)(name, (int)sizeof name, 0);
  EXPECT("its name", strcmp(name, "NVIDIA H200 (fake)") == 0);
  size_t total = 0;
  EXPECT("143771 MiB", CU(cuDeviceTotalMem_v2)(&total, 0) == 0 && total == (143771ull << 20));
  EXPECT("no device 1", CU(cuDeviceGet)(&n, 1) == 101);
  size_t free_b = 0, total_b = 0;
  EXPECT("memory info needs a context", CU(cuMemGetInfo_v2)(&free_b, &total_b) == 201);
  void* ctx = NULL;
  EXPECT("primary context", CU(cuDevicePrimaryCtxRetain)(&ctx, 0) == 0 && CU(cuCtxPushCurrent_v2)(ctx) == 0);

  // VMM: reserve, create (shareable), map; copies only once access is set.
  unsigned long long va = 0, h = 0;
  Prop prop = {1, 1, 1, 0, NULL, {0}};
  Access acc = {1, 0, 3};
  char buf[16] = "hello";
  EXPECT("reserve", CU(cuMemAddressReserve)(&va, kSize, (size_t)0, 0ull, 0ull) == 0 && va % (2u << 20) == 0);
  EXPECT("create", CU(cuMemCreate)(&h, kSize, &prop, 0ull) == 0);
  EXPECT("map", CU(cuMemMap)(va, kSize, (size_t)0, h, 0ull) == 0);
  EXPECT("no copy before access is set", CU(cuMemcpyHtoDAsync_v2)(va, buf, (size_t)6, NULL) == 1);
  EXPECT("set access", CU(cuMemSetAccess)(va, kSize, &acc, (size_t)1) == 0);
  EXPECT("copy in", CU(cuMemcpyHtoDAsync_v2)(va, buf, (size_t)6, NULL) == 0);
  EXPECT("no copy past the mapping", CU(cuMemcpyHtoDAsync_v2)(va + kSize - 2, buf, (size_t)6, NULL) == 1);
  CU(cuMemGetInfo_v2)(&free_b, &total_b);
  EXPECT("created memory counts as used", total_b - free_b == kSize);

  // Shareable memory: exported as an fd, imported in a child, same bytes.
  int fd = -1;
  EXPECT("export", CU(cuMemExportToShareableHandle)(&fd, h, 1, 0ull) == 0 && fd >= 0);
  pid_t child = fork();
  if (child == 0) {
    unsigned long long h2 = 0, va2 = 0;
    char out[16] = {0};
    int ok = CU(cuMemImportFromShareableHandle)(&h2, (void*)(long)fd, 1) == 0 &&
             CU(cuMemAddressReserve)(&va2, kSize, (size_t)0, 0ull, 0ull) == 0 &&
             CU(cuMemMap)(va2, kSize, (size_t)0, h2, 0ull) == 0 && CU(cuMemSetAccess)(va2, kSize, &acc, (size_t)1) == 0 &&
             CU(cuMemcpyDtoH_v2)(out, va2, (size_t)6) == 0 && strcmp(out, "hello") == 0 &&
             CU(cuMemcpyHtoDAsync_v2)(va2, "world", (size_t)6, NULL) == 0;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  char out[16] = {0};
  CU(cuMemcpyDtoH_v2)(out, va, (size_t)6);
  EXPECT("the importing process read the bytes and wrote its own", WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                                                                        strcmp(out, "world") == 0);
  unsigned long long h3 = 0;
  Prop plain = {1, 0, 1, 0, NULL, {0}};
  CU(cuMemCreate)(&h3, kSize, &plain, 0ull);
  int fd3 = -1;
  EXPECT("memory not made shareable does not export", CU(cuMemExportToShareableHandle)(&fd3, h3, 1, 0ull) == 1);
  CU(cuMemRelease)(h3);
  EXPECT("a reservation with a mapping is not freed", CU(cuMemAddressFree)(va, kSize) == 401);
  EXPECT("unmap, release, free", CU(cuMemUnmap)(va, kSize) == 0 && CU(cuMemRelease)(h) == 0 &&
                                     CU(cuMemAddressFree)(va, kSize) == 0);

  // Page-locked host memory.
  void* pinned = NULL;
  EXPECT("pinned allocation", CU(cuMemHostAlloc)(&pinned, kSize, 0u) == 0 && pinned);
  static char page_buf[3 << 12] __attribute__((aligned(4096)));
  EXPECT("register", CU(cuMemHostRegister_v2)(page_buf, sizeof page_buf, 8u) == 0);
  EXPECT("an overlapping registration is refused", CU(cuMemHostRegister_v2)(page_buf + 4096, (size_t)4096, 8u) == 712);
  EXPECT("unregister", CU(cuMemHostUnregister)(page_buf) == 0);
  EXPECT("unregister twice is refused", CU(cuMemHostUnregister)(page_buf) == 713);
  EXPECT("free pinned", CU(cuMemFreeHost)(pinned) == 0);

  // The checkpoint API on a child whose comm is listed, with the mark slot.
  // (A process's /proc environment is the one it was exec'd with: sleep(1).)
  setenv("HOTBOOT_FAKE_CUDA_COMMS", "sleep", 1);
  child = fork();
  if (child == 0) {
    char* const envp[] = {"HOTBOOT_FAKE_CUDA_MARK=________________", NULL};
    execle("/bin/sleep", "sleep", "600", (char*)NULL, envp);
    _exit(127);
  }
  WaitExec(child);
  int tid = 0, state = -1;
  EXPECT("a process not listed is not a CUDA process", CU(cuCheckpointProcessGetRestoreThreadId)((int)getpid(), &tid) == 500);
  EXPECT("the listed child is", CU(cuCheckpointProcessGetRestoreThreadId)((int)child, &tid) == 0 && tid == child);
  EXPECT("running", CU(cuCheckpointProcessGetState)((int)child, &state) == 0 && state == 0);
  unsigned char args[64] = {0};
  EXPECT("no checkpoint before the lock", CU(cuCheckpointProcessCheckpoint)((int)child, args) == 401);
  EXPECT("lock", CU(cuCheckpointProcessLock)((int)child, args) == 0);
  EXPECT("checkpoint", CU(cuCheckpointProcessCheckpoint)((int)child, args) == 0);
  EXPECT("checkpointed", CU(cuCheckpointProcessGetState)((int)child, &state) == 0 && state == 2);
  snprintf(path, sizeof path, "/proc/%d/environ", (int)child);
  FILE* env = fopen(path, "r");
  char envbuf[65536];
  size_t got = env ? fread(envbuf, 1, sizeof envbuf - 1, env) : 0;
  if (env) fclose(env);
  int marked = 0;
  char mark_var[64] = {0};
  for (size_t i = 0; i < got; i += strlen(envbuf + i) + 1) {
    if (strncmp(envbuf + i, "HOTBOOT_FAKE_CUDA_MARK=ckpt", 27) == 0) {
      marked = 1;
      snprintf(mark_var, sizeof mark_var, "%s", envbuf + i);
    }
  }
  EXPECT("the checkpoint marked the process image", marked);
  // What CRIU would bring back under another PID: the marked image.
  pid_t copy = fork();
  if (copy == 0) {
    char* const envp[] = {mark_var, NULL};
    execle("/bin/sleep", "sleep", "600", (char*)NULL, envp);
    _exit(127);
  }
  WaitExec(copy);
  EXPECT("a process with the marked image is checkpointed under another PID",
         CU(cuCheckpointProcessGetState)((int)copy, &state) == 0 && state == 2);
  kill(copy, SIGKILL);
  waitpid(copy, NULL, 0);
  EXPECT("a restore onto an unknown GPU is refused", ({
           unsigned char ra[64] = {0};
           unsigned char pairs[32] = {0};  // old and new UUIDs: zeros name no GPU here
           *(void**)ra = pairs;
           *(unsigned*)(ra + 8) = 1;
           CU(cuCheckpointProcessRestore)((int)child, ra) == 1;
         }));
  EXPECT("restore", CU(cuCheckpointProcessRestore)((int)child, NULL) == 0);
  EXPECT("no second restore", CU(cuCheckpointProcessRestore)((int)child, NULL) == 401);
  EXPECT("unlock", CU(cuCheckpointProcessUnlock)((int)child, args) == 0);
  EXPECT("running again", CU(cuCheckpointProcessGetState)((int)child, &state) == 0 && state == 0);
  setenv("HOTBOOT_FAKE_CUDA_FAIL", "cuCheckpointProcessLock", 1);
  EXPECT("an injected fault", CU(cuCheckpointProcessLock)((int)child, args) == 999);
  unsetenv("HOTBOOT_FAKE_CUDA_FAIL");
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);

  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
  if (failures) {
    fprintf(stderr, "fake_libcuda_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("fake_libcuda_test: all checks passed\n");
  return 0;
}
