// `hotboot bench trust`: what checking a snapshot's signature and its
// chunks' SHA-256s costs a restore, against the same restore without them,
// in one run.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/restore.h"
#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct TrustBenchArgs {
  std::string snapshot;
  std::string workdir = "/var/tmp";
  int repeat = 3;
  int port = 18480;
  bool warm_cache = false;
  bool json_out = false;
};

// The page cache's copy of a file, dropped (clean pages only: the snapshot
// is read, never written, by a restore), so that each restore reads it from
// the disk as a new host would.
Status DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  ::fdatasync(fd);
  const int err = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  if (err != 0) return ErrnoError("posix_fadvise " + path, err);
  return Status::Ok();
}

// The node cache's copies of the files the snapshot provides, removed, as on
// a host that never had them (a replica mapping one keeps its inode).
Result<int> RemoveProvidedFiles(const Manifest& m) {
  const std::string dir = ResolveWeightsDir();
  int removed = 0;
  for (const auto& f : m.process.provided_files) {
    std::error_code ec;
    if (fs::remove(dir + "/" + f.name, ec)) ++removed;
    if (ec) return IoError("remove " + dir + "/" + f.name + ": " + ec.message());
  }
  return removed;
}

struct Variant {
  const char* name;
  bool checked;  // trust policy in force + chunk SHA-256s checked
  std::vector<json> runs;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int RunBenchTrust(const TrustBenchArgs& a) {
  // A signed copy: the bench signs with a key of its own and never touches
  // the snapshot it was given.
  std::string tmpl = a.workdir + "/hotboot-bench-trust.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) return Fail(ErrnoError("mkdtemp " + tmpl, errno));
  const std::string work = buf.data();
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{work};
  const std::string snap = work + "/signed.hbsnap", key = work + "/bench.key";
  std::error_code ec;
  fs::copy_file(a.snapshot, snap, ec);
  if (ec) return Fail(IoError("copy " + a.snapshot + " to " + snap + ": " + ec.message()));
  auto pub = snapfile::GenerateKeyPair(key);
  if (!pub.ok()) return Fail(pub.status());
  auto priv = snapfile::LoadPrivateKey(key);
  if (!priv.ok()) return Fail(priv.status());
  auto signed_out = snapfile::SignSnapshot(snap, *priv);
  if (!signed_out.ok()) return Fail(signed_out.status().Prefixed("sign " + snap));
  auto policy = snapfile::LoadTrustPolicy({key + ".pub"}, "");
  if (!policy.ok()) return Fail(policy.status());

  auto reader = snapfile::SnapshotReader::Open(snap);
  if (!reader.ok()) return Fail(reader.status());
  auto manifest = ParseManifest((*reader)->manifest_json());
  if (!manifest.ok()) return Fail(manifest.status());
  uint64_t stored = 0, raw = 0;
  for (const auto& s : (*reader)->sections()) stored += s.stored_size, raw += s.raw_size;
  const uint64_t chunks = (*reader)->trust().chunk_count;
  reader->reset();

  auto criu = MakeLibCriu();
  Variant variants[2] = {{"unchecked", false, {}}, {"checked", true, {}}};
  if (!Quiet()) {
    Note("restoring " + a.snapshot + " " + std::to_string(2 * a.repeat) + " times (" + HumanBytes(stored) +
         " stored, " + std::to_string(chunks) + " chunks), " +
         (a.warm_cache ? "node cache and page cache warm" : "as on a fresh host (its weights removed from the node cache, the snapshot dropped from the page cache)"));
  }
  for (int i = 0; i < a.repeat; ++i) {
    // Alternating, unchecked first in even rounds and checked first in odd
    // ones: drift in the machine's speed lands on both.
    for (int k = 0; k < 2; ++k) {
      Variant& v = variants[(i + k) % 2];
      if (!a.warm_cache) {
        if (Status s = DropFromPageCache(snap); !s.ok()) return Fail(s);
        auto removed = RemoveProvidedFiles(*manifest);
        if (!removed.ok()) return Fail(removed.status());
      }
      RestoreOptions o;
      o.snapshot_path = snap;
      o.port = a.port + 2 * i + k;  // a port of its own: the last replica's may linger in TIME_WAIT
      o.skip_latency_check = true;  // the canary still runs; its bound is not what is measured
      if (v.checked) o.trust = *policy;
      o.check_chunk_hashes = v.checked;
      auto r = RestoreReplica(o, *criu, {});
      if (!r.ok()) return Fail(r.status().Prefixed(std::string("restore (") + v.name + ")"));
      if (v.checked && !r->trust.signed_validly()) return Fail(Internal("the signed copy restored without a valid signature"));
      json run = {{"time_to_ready_ms", r->time_to_ready_ms}, {"timings_ms", r->timings_ms}};
      v.runs.push_back(run);
      if (!Quiet()) Note(std::string(v.name) + " restore " + std::to_string(i + 1) + ": " + Ms(r->time_to_ready_ms));
      r->replica.reset();  // ends the replica before the next restore takes the port
    }
  }

  auto med = [](const Variant& v, const char* phase) {
    std::vector<double> xs;
    for (const auto& r : v.runs) {
      if (std::string(phase) == "total") {
        xs.push_back(r["time_to_ready_ms"].get<double>());
      } else if (r["timings_ms"].contains(phase)) {
        xs.push_back(r["timings_ms"][phase].get<double>());
      }
    }
    return Median(xs);
  };
  const char* phases[] = {"check", "unpack", "weights", "criu_restore", "after_restore", "verify", "total"};
  const double base = med(variants[0], "total"), checked = med(variants[1], "total");
  const double cost = checked - base;
  if (a.json_out) {
    json out = {{"snapshot", a.snapshot},
                {"stored_bytes", stored},
                {"raw_bytes", raw},
                {"chunks", chunks},
                {"fresh_host", !a.warm_cache},
                {"repeat", a.repeat},
                {"unchecked_ms", base},
                {"checked_ms", checked},
                {"cost_ms", cost},
                {"cost_fraction", base > 0 ? cost / base : 0.0}};
    for (const auto& v : variants) {
      json phase_medians = json::object();
      for (const char* p : phases) phase_medians[p] = med(v, p);
      out[v.name] = {{"median_ms", phase_medians}, {"runs", v.runs}};
    }
    std::printf("%s\n", out.dump().c_str());
    return kExitOk;
  }
  std::printf("restore of %s, median of %d, %s:\n", a.snapshot.c_str(), a.repeat,
              a.warm_cache ? "node cache warm" : "as on a fresh host");
  std::printf("  %-14s %12s %12s %10s\n", "phase", "unchecked", "checked", "difference");
  for (const char* p : phases) {
    const double u = med(variants[0], p), c = med(variants[1], p);
    std::printf("  %-14s %12s %12s %10s\n", p, Ms(u).c_str(), Ms(c).c_str(), Ms(c - u).c_str());
  }
  std::printf("signature + chunk SHA-256 checks: %s of %s, %.1f%% of the unchecked restore\n", Ms(cost).c_str(),
              Ms(base).c_str(), base > 0 ? 100.0 * cost / base : 0.0);
  return kExitOk;
}

}  // namespace

void AddBenchTrust(CLI::App& bench, Runner* run) {
  auto a = std::make_shared<TrustBenchArgs>();
  CLI::App* t = bench.add_subcommand(
      "trust", "What signature and chunk SHA-256 checks cost a restore, against the same restore without them");
  t->footer(
      "Signs a copy of the snapshot with a throwaway key (in --workdir), then restores it --repeat\n"
      "times each way, alternating: 'checked' (a trust policy holding that key, every chunk's\n"
      "SHA-256 checked before it is decoded: what restore does) and 'unchecked' (no policy, chunk\n"
      "SHA-256s not checked: the XXH3 checksums and content hashes only). By default each restore\n"
      "is as on a fresh host: the snapshot's weights are removed from the node cache\n"
      "($HOTBOOT_WEIGHTS_DIR) and the snapshot is dropped from the page cache; --warm-cache keeps\n"
      "both. Prints each phase's median and the difference. Needs root (CRIU), like restore.");
  t->add_option("--snapshot", a->snapshot, "Snapshot to restore (built by hotboot build)")->required();
  t->add_option("--workdir", a->workdir, "Where the signed copy goes (removed afterwards)");
  t->add_option("--repeat", a->repeat, "Restores of each kind; medians are reported")->check(CLI::Range(1, 50));
  t->add_option("--port", a->port, "Port the restored replicas serve on")->check(CLI::Range(1, 65535));
  t->add_flag("--warm-cache", a->warm_cache, "Keep the node cache and the page cache warm between restores");
  t->add_flag("--json", a->json_out, "Print the result as JSON");
  *run = [a, t]() { return t->parsed() ? RunBenchTrust(*a) : -1; };
}

}  // namespace hotboot::cli
