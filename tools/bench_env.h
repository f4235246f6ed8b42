// What the benches that start real processes share (`bench fetch`, `bench
// burst`): children with their output captured and stopped on every exit
// path, a network namespace with its loopback shaped by tc, Debian's
// docker-registry and nginx inside it, the bench directory's pinned
// executables and snapshots, and the signal watcher that undoes it all on
// Ctrl-C. A bench is a CLI (tools/), so these may print notes; they never exit
// except from the signal watcher.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/status.h"

namespace hotboot::cli::bench {

using Clock = std::chrono::steady_clock;

// Inside a bench's namespace nothing else listens: fixed ports.
inline constexpr int kRegistryPort = 5000;
inline constexpr int kFilePort = 8443;
inline constexpr auto kRestoreTimeout = std::chrono::minutes(15);
inline constexpr auto kCommandTimeout = std::chrono::minutes(30);  // a build of the 1b preset, a 2 GB download at 1 Gbit/s
inline constexpr auto kServerStartTimeout = std::chrono::seconds(30);

double SecondsSince(Clock::time_point t);
std::string Fixed(double v, int digits = 2);
std::string Joined(const std::vector<std::string>& argv);
// The last lines of a log, for an error message ("" when there are none).
std::string LogTail(const std::string& path, int lines = 12);
double Median(std::vector<double> v);
// The q-quantile (0..1) of v, nearest rank (the value a replica really had).
double Quantile(std::vector<double> v, double q);

// ---- what a stop signal must undo ---------------------------------------------

// The children still running, the namespace and the scratch directory, for
// the signal watcher: SIGINT/SIGTERM/SIGHUP are blocked in every thread of the
// bench and taken by one thread, which stops the children, removes the
// namespace and the scratch directory, and exits 128+signal.
struct Undo {
  std::mutex mu;
  std::set<pid_t> children;
  std::string netns;
  std::string scratch;  // removed too, unless kept
  std::string emptied;  // a directory emptied too (what a bench fills: its weights), unless kept
  std::set<std::string> cgroups;  // ended with the cgroups made inside them (KillCgroupTree)
  std::atomic<bool> stopping{false};
};
Undo& Pending();
// `what` names the bench in the message ("bench fetch").
void StartSignalWatcher(const std::string& what);
// A failure the bench reports (Fail's exit code), unless it is only the
// watcher stopping the children: then the watcher's exit is awaited.
int Failed(const Status& s);
// Note("error: ..."), likewise.
void NoteError(const std::string& message);

// Root and the tools on PATH, then the signal watcher started: what a bench
// checks first. `what` names the bench ("bench fetch"), `why` what root is
// for ("network namespaces, tc, CRIU").
Status Preflight(const std::string& what, const std::string& why, const std::vector<std::string>& tools);

// Ends a cgroup of the bench's and the cgroups made inside it (a restore
// gives its replica one there, which keeps rmdir of ours from working if the
// restore could not remove it): cgroup.kill (recursive), a wait (bounded by
// `timeout`) until cgroup.events says it is unpopulated, then rmdir of every
// cgroup under it, deepest first. Leaves `path` itself for its Job to end
// (host/job.h), unless `remove_self`. Best effort; what is left is reported.
Status KillCgroupTree(const std::string& path, bool remove_self,
                      std::chrono::milliseconds timeout = std::chrono::seconds(5));

// ---- processes ----------------------------------------------------------------

Result<std::string> OnPath(const std::string& name);

// A child process of the bench: stdin /dev/null, stderr appended to a log,
// stdout to a pipe (capture) or the log. It gets SIGTERM if the bench dies.
// With cgroup_procs_fd >= 0 it writes "0" there before it execs (a cgroup's
// cgroup.procs, host/cgroup.h): everything it starts stays in that cgroup.
class Child {
 public:
  static Result<std::unique_ptr<Child>> Start(const std::vector<std::string>& argv, const std::string& log,
                                              bool capture, int cgroup_procs_fd = -1);
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { Stop(); }

  pid_t pid() const { return pid_; }
  const std::string& command() const { return command_; }
  const std::string& log() const { return log_; }

  // Its status once it exited, without waiting.
  std::optional<int> Exited();
  // Its stdout's first line; an error when it ends or the deadline passes first.
  Result<std::string> ReadLine(Clock::duration timeout) { return Read(timeout, true); }
  // All of its stdout, until it closes it.
  Result<std::string> ReadAll(Clock::duration timeout) { return Read(timeout, false); }
  // Waits for it to exit (SIGTERM, then SIGKILL after `grace`, when stop).
  int Wait(bool stop = false, std::chrono::seconds grace = std::chrono::seconds(20));
  int Stop() { return Wait(true); }

  static std::string Describe(int status);

 private:
  Child(pid_t pid, int out, std::string command, std::string log)
      : pid_(pid), out_(out), command_(std::move(command)), log_(std::move(log)) {}
  void Reaped();
  Result<std::string> Read(Clock::duration timeout, bool line_only);

  pid_t pid_;
  int out_;
  int status_ = 0;
  std::string command_, log_, got_;
};

// Runs argv to the end; its stdout when it exits 0, else an error with its log's end.
Result<std::string> RunCommand(const std::vector<std::string>& argv, const std::string& log,
                               Clock::duration timeout = kCommandTimeout);

// ---- the namespace ------------------------------------------------------------

// The processes whose network namespace is `name`'s.
std::vector<pid_t> PidsInNetns(const std::string& name);
// Ends every process in `name`'s network namespace, then removes it.
void RemoveNetns(const std::string& name);

// A network namespace with only its loopback, up; removed (with everything
// still running in it) when destroyed.
class Netns {
 public:
  static Result<std::unique_ptr<Netns>> Create(const std::string& name, const std::string& log);
  ~Netns();
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;

  const std::string& name() const { return name_; }
  // argv as run inside: nsenter --net=/run/netns/NAME -- argv...
  std::vector<std::string> Exec(const std::vector<std::string>& argv) const;
  // The loopback's egress, token bucket at `gbit` Gbit/s: a burst of 1 ms of
  // the rate (at least 1 MB, so that 64 KiB GSO packets pass), 50 ms of queue.
  Status Shape(double gbit);
  // fn on a thread of ours inside the namespace (setns is per thread for
  // network namespaces); its sockets are the namespace's.
  Status RunInside(const std::function<Status()>& fn) const;

 private:
  Netns(std::string name, std::string log) : name_(std::move(name)), log_(std::move(log)) {}
  std::string name_, log_;
};

// ---- the servers inside ---------------------------------------------------------

Status WriteText(const std::string& path, const std::string& text);
Status MakeDirs(const std::string& path, mode_t mode = 0755);

// A CA of the bench's and a certificate for 127.0.0.1 signed by it (openssl CLI).
struct Tls {
  std::string ca, cert, key;
};
Result<Tls> MakeTls(const std::string& dir, const std::string& log);

// What the clients inside need to reach the servers.
struct Endpoints {
  bool tls = true;
  std::string ca;  // empty without TLS
  std::string registry() const;
  std::string file_url(const std::string& name) const;
  // curl's options for the file server / the registry.
  std::vector<std::string> curl_tls() const;
  // hotboot push/restore's options for the registry.
  std::vector<std::string> hotboot_remote() const;
};

// Debian's docker-registry (the CNCF distribution registry) on
// 127.0.0.1:5000 inside, filesystem storage under dir, no auth.
Result<std::unique_ptr<Child>> StartRegistry(const Netns& ns, const Endpoints& ep, const Tls& tls,
                                             const std::string& dir);
// nginx serving docroot on 127.0.0.1:8443 inside (Range, as nginx does for
// static files), everything it writes under dir.
Result<std::unique_ptr<Child>> StartFileServer(const Netns& ns, const Endpoints& ep, const Tls& tls,
                                               const std::string& dir, const std::string& docroot);

// ---- the bench's directories and snapshots ---------------------------------------

// Removes everything in a directory the bench owns (its weights, the node cache).
Status EmptyDir(const std::string& dir);
Result<uint64_t> FileSize(const std::string& path);
// $HOTBOOT_HOME, else ~/.cache/hotboot.
std::string HomeDir();

struct Binaries {
  std::string hotboot, server;  // the copies in the bench directory's bin/
};
// The executables every command of a run uses, copied into `home`/bin: this
// very hotboot (read through /proc/self/exe, the file this process runs even
// if a rebuild replaced the path) and its hotboot-server. A build elsewhere
// can then neither break an exec mid-run nor change the server a snapshot
// maps (CRIU restores the very file); when the server changed, the snapshots
// made with the old one (home/snapshots/*.hbsnap) are removed.
Result<Binaries> PinBinaries(const std::string& home);

// home/snapshots/PRESET.hbsnap, built with `hotboot build --preset P` (log:
// `log`) unless one is there that maps its weights from `weights_dir`.
Result<std::string> EnsureSnapshot(const Binaries& bin, const std::string& home, const std::string& weights_dir,
                                   const std::string& preset, bool rebuild, const std::string& log);

// ---- one run of a bench ------------------------------------------------------------

// What every run of a bench holds: its directories, its numbered logs and the
// namespace with its servers. Each bench's context extends it.
struct Run {
  std::string home;     // the bench directory (kept: snapshots, weights, bin/)
  std::string weights;  // HOTBOOT_WEIGHTS_DIR of every server, build, restore
  std::string scratch;  // this run's (removed unless --keep)
  std::string logs;     // scratch/logs
  Netns* ns = nullptr;
  Endpoints ep;
  std::set<pid_t> servers;  // the servers' processes: what stays in the namespace between cases
  int next_port = 0;        // the next replica's port (each bench sets its first)
  int log_seq = 0;

  // logs/NNN-what.log, numbered in the order they are asked for.
  std::string Log(const std::string& what);
};

// The run's directories: home (workdir, else $HOTBOOT_HOME/default_name,
// absolute), weights (home/weights, not made here), scratch (home/run-PID)
// and its logs/, made.
Status PrepareRunDirs(Run& run, const std::string& workdir, const std::string& default_name);

// Removes the run's scratch directory when destroyed (and empties its weights
// directory, with empty_weights), or says it was kept (`kept`: what it holds);
// made, it has the signal watcher remove the scratch directory too.
class RunCleanup {
 public:
  RunCleanup(const Run& run, bool keep, bool empty_weights, std::string kept);
  ~RunCleanup();
  RunCleanup(const RunCleanup&) = delete;
  RunCleanup& operator=(const RunCleanup&) = delete;

 private:
  const Run& run_;
  bool keep_, empty_weights_;
  std::string kept_;
};

// The namespace and the servers in it; destroyed servers first, then the
// namespace (with anything still inside).
struct Servers {
  std::unique_ptr<Netns> ns;
  std::unique_ptr<Child> registry, nginx;
};
// The namespace `name`, certificates unless plain_http, docker-registry, and
// nginx serving `docroot` when it is not empty; sets run.ns, run.ep and
// run.servers, and notes where they listen.
Result<Servers> StartServers(Run& run, const std::string& name, bool plain_http, const std::string& docroot = "");

// `hotboot push SNAPSHOT REF --json` inside the run's namespace.
struct Pushed {
  double seconds = 0;
  uint64_t bytes_uploaded = 0;
};
Result<Pushed> Push(Run& run, const std::string& hotboot, const std::string& snapshot, const std::string& ref,
                    const std::string& log);

// Waits until nothing but the servers runs in the namespace (a stopped
// restore's replica may take a moment to exit); what is left after 20 s is
// killed, with a warning. Every case starts with no replica running.
void WaitForReplicasGone(const Run& run, const std::string& what);

// ---- replicas -----------------------------------------------------------------------

// `hotboot restore SOURCE --port PORT --json --no-latency-check EXTRA...`.
std::vector<std::string> RestoreArgv(const std::string& hotboot, const std::string& source, int port,
                                     const std::vector<std::string>& extra);

// What `hotboot restore --json` printed on its result line.
struct RestoreReport {
  double time_to_ready_s = 0;  // as the restore counts it, from its process's start
  uint64_t bytes_fetched = 0, bytes_from_cache = 0;
  nlohmann::json timings_ms = nlohmann::json::object();
};
// An error (with the end of `log`) when the line is not a result or says it failed.
Result<RestoreReport> ParseRestoreLine(const std::string& line, const std::string& log);

// Polls GET /readyz of 127.0.0.1:port inside the namespace every 10 ms until
// it answers 200: then the seconds since t0. An error when `server` exits
// first or kRestoreTimeout passes.
Result<double> WaitReadyz(const Netns& ns, int port, Child& server, Clock::time_point t0);

}  // namespace hotboot::cli::bench
