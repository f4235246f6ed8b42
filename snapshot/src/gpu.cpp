// GPU capture and restore over the CudaDriver seam: which processes, in
// which order, what is recorded, what is undone when a step fails.
#include "hotboot/gpu.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

namespace hotboot {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string Pid(pid_t p) { return "pid " + std::to_string(p); }

std::string GiB(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1u << 30));
  return buf;
}

}  // namespace

std::vector<GpuDevice> GpuCaptureInfo::Captured() const {
  std::vector<GpuDevice> out;
  for (size_t i = 0; i < devices.size(); ++i) {
    if (i < used_bytes.size() && used_bytes[i] > 0) out.push_back(devices[i]);
  }
  return out.empty() ? devices : out;
}

json ToJson(const GpuCaptureInfo& g) {
  json devs = json::array();
  for (size_t i = 0; i < g.devices.size(); ++i) {
    const auto& d = g.devices[i];
    devs.push_back({{"ordinal", d.ordinal},
                    {"uuid", d.uuid},
                    {"name", d.name},
                    {"compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
                    {"total_bytes", d.total_bytes},
                    {"used_bytes", i < g.used_bytes.size() ? g.used_bytes[i] : 0}});
  }
  return {{"driver_version", g.driver_version},
          {"cuda_version", g.cuda_version},
          {"processes", g.processes},
          {"devices", devs},
          {"timings_ms", {{"lock", g.lock_ms}, {"checkpoint", g.checkpoint_ms}}}};
}

Result<GpuCaptureInfo> GpuCaptureInfoFromJson(const json& j) {
  GpuCaptureInfo g;
  try {
    g.driver_version = j.value("driver_version", "");
    g.cuda_version = j.value("cuda_version", 0);
    g.processes = j.at("processes").get<int>();
    for (const auto& d : j.at("devices")) {
      GpuDevice dev;
      dev.ordinal = d.at("ordinal").get<int>();
      dev.uuid = d.at("uuid").get<std::string>();
      dev.name = d.at("name").get<std::string>();
      const std::string cc = d.at("compute_capability").get<std::string>();
      if (std::sscanf(cc.c_str(), "%d.%d", &dev.cc_major, &dev.cc_minor) != 2) {
        return Corrupt("manifest gpu: compute_capability '" + cc + "' is not MAJOR.MINOR");
      }
      dev.total_bytes = d.value("total_bytes", uint64_t{0});
      g.devices.push_back(std::move(dev));
      g.used_bytes.push_back(d.value("used_bytes", uint64_t{0}));
    }
    if (j.contains("timings_ms")) {
      g.lock_ms = j["timings_ms"].value("lock", 0.0);
      g.checkpoint_ms = j["timings_ms"].value("checkpoint", 0.0);
    }
  } catch (const json::exception& e) {
    return Corrupt(std::string("manifest gpu: ") + e.what());
  }
  if (g.processes < 0 || (g.processes > 0 && g.devices.empty())) {
    return Corrupt("manifest gpu: " + std::to_string(g.processes) + " CUDA processes on " +
                   std::to_string(g.devices.size()) + " devices");
  }
  return g;
}

Result<GpuCheckpoint> GpuCheckpoint::Take(CudaDriver& driver, const std::vector<pid_t>& pids,
                                          std::chrono::milliseconds lock_timeout) {
  GpuCheckpoint c;
  c.driver_ = &driver;
  std::vector<pid_t> cuda;
  for (pid_t p : pids) {
    auto st = driver.ProcessState(p);
    if (!st.ok()) {
      if (st.status().code() == Code::kNotFound) continue;  // not a CUDA process
      return st.status().Prefixed("GPU state of " + Pid(p));
    }
    if (*st != CudaProcessState::kRunning) {
      // Someone else is in the middle of a checkpoint of it; do not interfere.
      return FailedPrecondition("GPU capture: " + Pid(p) + " is " + CudaProcessStateName(*st) +
                                ", not running; another checkpoint tool may be at work on it");
    }
    cuda.push_back(p);
  }
  c.info_.driver_version = driver.DriverVersion();
  c.info_.cuda_version = driver.CudaVersion();
  if (cuda.empty()) return c;

  HB_ASSIGN_OR_RETURN(c.info_.devices, driver.Devices());
  const auto tl = Clock::now();
  for (pid_t p : cuda) {
    Status s = driver.Lock(p, lock_timeout);
    if (!s.ok()) {
      c.Rollback();
      return s.Prefixed("GPU capture: locking " + Pid(p) + " (CUDA calls still running after " +
                        std::to_string(lock_timeout.count()) + " ms?)");
    }
    c.touched_.emplace_back(p, CudaProcessState::kLocked);
  }
  c.info_.lock_ms = MsSince(tl);
  const auto tc = Clock::now();
  for (auto& [p, state] : c.touched_) {
    Status s = driver.Checkpoint(p);
    if (!s.ok()) {
      c.Rollback();
      return s.Prefixed("GPU capture: checkpointing " + Pid(p));
    }
    state = CudaProcessState::kCheckpointed;
  }
  c.info_.checkpoint_ms = MsSince(tc);
  c.info_.processes = static_cast<int>(cuda.size());
  // What the checkpoint released on each device is the memory the captured
  // processes held there (other tenants of a GPU can blur this; it is a
  // guide for restore's free-memory check, not an accounting).
  auto after = driver.Devices();
  if (!after.ok()) {
    c.Rollback();
    return after.status().Prefixed("GPU capture: devices after checkpoint");
  }
  for (const auto& d : c.info_.devices) {
    uint64_t used = 0;
    for (const auto& a : *after) {
      if (a.uuid == d.uuid && a.free_bytes > d.free_bytes) used = a.free_bytes - d.free_bytes;
    }
    c.info_.used_bytes.push_back(used);
  }
  return c;
}

Status GpuCheckpoint::Rollback() {
  Status first;
  // Undo in reverse: a process is restored before it is unlocked.
  for (auto it = touched_.rbegin(); it != touched_.rend(); ++it) {
    auto& [p, state] = *it;
    if (state == CudaProcessState::kCheckpointed) {
      Status s = driver_->Restore(p, {});
      if (!s.ok()) {
        if (first.ok()) first = s.Prefixed("GPU rollback");
        continue;  // still checkpointed: unlocking would fail too
      }
      state = CudaProcessState::kLocked;
    }
    if (state == CudaProcessState::kLocked) {
      Status s = driver_->Unlock(p);
      if (!s.ok()) {
        if (first.ok()) first = s.Prefixed("GPU rollback");
        continue;
      }
      state = CudaProcessState::kRunning;
    }
  }
  std::erase_if(touched_, [](const auto& t) { return t.second == CudaProcessState::kRunning; });
  return first;
}

Result<std::vector<GpuPair>> PlanGpuPairs(const GpuCaptureInfo& captured, const std::vector<GpuDevice>& host) {
  const std::vector<GpuDevice> want = captured.Captured();
  std::map<std::string, uint64_t> need;  // uuid -> bytes
  for (size_t i = 0; i < captured.devices.size(); ++i) {
    need[captured.devices[i].uuid] = i < captured.used_bytes.size() ? captured.used_bytes[i] : 0;
  }
  if (want.size() > host.size()) {
    return Incompatible("the snapshot holds GPU state of " + std::to_string(want.size()) + " GPU(s); this host has " +
                        std::to_string(host.size()));
  }
  std::set<std::string> taken;
  std::vector<std::pair<std::string, std::string>> mapping;
  std::vector<std::string> problems;
  // Same UUID first (restoring on the build host), then by model.
  std::vector<const GpuDevice*> rest;
  for (const auto& w : want) {
    auto same = std::find_if(host.begin(), host.end(), [&](const GpuDevice& h) { return h.uuid == w.uuid; });
    if (same != host.end() && same->free_bytes >= need[w.uuid]) {
      taken.insert(same->uuid);
      mapping.emplace_back(w.uuid, same->uuid);
    } else {
      rest.push_back(&w);
    }
  }
  for (const GpuDevice* w : rest) {
    const std::string cc = std::to_string(w->cc_major) + "." + std::to_string(w->cc_minor);
    const GpuDevice* pick = nullptr;
    std::string why;
    for (const auto& h : host) {
      if (taken.count(h.uuid)) continue;
      if (h.name != w->name || h.cc_major != w->cc_major || h.cc_minor != w->cc_minor) {
        if (why.empty()) why = "GPU " + std::to_string(h.ordinal) + " is " + h.name + " (sm " +
                               std::to_string(h.cc_major) + "." + std::to_string(h.cc_minor) + ")";
        continue;
      }
      if (h.free_bytes < need[w->uuid]) {
        why = "GPU " + std::to_string(h.ordinal) + " has " + GiB(h.free_bytes) + " free, the state needs " +
              GiB(need[w->uuid]);
        continue;
      }
      pick = &h;
      break;
    }
    if (!pick) {
      problems.push_back("no GPU here can take the state of " + w->name + " (sm " + cc + ", " + w->uuid +
                         (why.empty() ? "" : "): " + why) + (why.empty() ? ")" : ""));
      continue;
    }
    taken.insert(pick->uuid);
    mapping.emplace_back(w->uuid, pick->uuid);
  }
  if (!problems.empty()) {
    std::string msg = problems.front();
    for (size_t i = 1; i < problems.size(); ++i) msg += "; " + problems[i];
    return Incompatible(msg);
  }
  std::vector<GpuPair> pairs;
  bool identity = true;
  for (const auto& [o, n] : mapping) identity = identity && o == n;
  if (identity) return pairs;
  // The driver wants every checkpointed GPU in the list once pairs are given.
  for (const auto& [o, n] : mapping) pairs.push_back({o, n});
  return pairs;
}

Result<GpuRestoreStats> RestoreGpuProcesses(CudaDriver& driver, const std::vector<pid_t>& pids,
                                            const std::vector<GpuPair>& pairs, int expected) {
  GpuRestoreStats st;
  std::vector<pid_t> cuda;
  for (pid_t p : pids) {
    auto s = driver.ProcessState(p);
    if (!s.ok()) {
      if (s.status().code() == Code::kNotFound) continue;
      return s.status().Prefixed("GPU state of restored " + Pid(p));
    }
    if (*s != CudaProcessState::kCheckpointed) {
      return FailedPrecondition("restored " + Pid(p) + " is " + CudaProcessStateName(*s) +
                                " on the GPU side, expected checkpointed");
    }
    cuda.push_back(p);
  }
  if (static_cast<int>(cuda.size()) != expected) {
    return FailedPrecondition("the restored tree has " + std::to_string(cuda.size()) +
                              " checkpointed CUDA processes; the snapshot recorded " + std::to_string(expected));
  }
  // All restored before any is unlocked: peers resume together.
  const auto tr = Clock::now();
  for (pid_t p : cuda) HB_RETURN_IF_ERROR(driver.Restore(p, pairs).Prefixed("GPU restore of " + Pid(p)));
  st.restore_ms = MsSince(tr);
  const auto tu = Clock::now();
  for (pid_t p : cuda) HB_RETURN_IF_ERROR(driver.Unlock(p).Prefixed("GPU unlock of " + Pid(p)));
  st.unlock_ms = MsSince(tu);
  st.processes = static_cast<int>(cuda.size());
  return st;
}

}  // namespace hotboot
