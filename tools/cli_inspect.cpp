#include <cstdio>
#include <map>
#include <memory>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct InspectArgs {
  std::string snapshot;
  bool json_out = false;
  bool all_sections = false;
};

std::string Ratio(uint64_t stored, uint64_t raw) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.1f%%", raw ? 100.0 * static_cast<double>(stored) / static_cast<double>(raw) : 0.0);
  return buf;
}

std::string Str(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return "-";
  const json& v = j[key];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

int RunInspect(const InspectArgs& a) {
  auto r = snapfile::SnapshotReader::Open(a.snapshot);
  if (!r.ok()) return Fail(r.status());
  const auto& rd = **r;
  json m = json::parse(rd.manifest_json(), nullptr, false);
  if (!m.is_object()) return Fail(Corrupt(a.snapshot + ": the manifest is not a JSON object"));
  uint64_t raw = 0, stored = 0, chunks = 0;
  for (const auto& s : rd.sections()) {
    raw += s.raw_size;
    stored += s.stored_size;
    chunks += s.chunks.size();
  }
  if (a.json_out) {
    json secs = json::array();
    for (const auto& s : rd.sections()) {
      secs.push_back({{"name", s.name}, {"raw_bytes", s.raw_size}, {"stored_bytes", s.stored_size},
                      {"chunks", s.chunks.size()}, {"mode", s.mode}});
    }
    json out = {{"path", a.snapshot},
                {"format_version", std::to_string(rd.version_major()) + "." + std::to_string(rd.version_minor())},
                {"file_bytes", rd.file_size()},
                {"raw_bytes", raw},
                {"stored_bytes", stored},
                {"file_digest", rd.file_digest_hex()},
                {"sections", secs},
                {"manifest", m}};
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  const json host = m.value("host", json::object());
  const json warm = m.value("warm", json::object());
  const json canary = warm.value("canary", json::object());
  std::printf("snapshot      %s\n", a.snapshot.c_str());
  std::printf("format        v%u.%u, %s, digest %s\n", rd.version_major(), rd.version_minor(),
              HumanBytes(rd.file_size()).c_str(), rd.file_digest_hex().c_str());
  std::printf("created       %s by hotboot %s (%s mode)\n", Str(m, "created_at").c_str(),
              Str(m, "tool_version").c_str(), Str(m, "mode").c_str());
  std::printf("build host    %s, %s, kernel %s, %s CPUs: %s\n", Str(host, "hostname").c_str(),
              Str(host, "arch").c_str(), Str(host, "kernel").c_str(), Str(host, "cpus").c_str(),
              Str(host, "cpu_model").c_str());
  std::printf("CRIU          %s, images %s\n", Str(m.value("criu", json::object()), "version").c_str(),
              HumanBytes(m.value("criu", json::object()).value("images_bytes", uint64_t{0})).c_str());
  std::string cmd;
  const json command = m.value("process", json::object()).value("command", json::array());
  for (const auto& c : command) {
    cmd += (cmd.empty() ? "" : " ") + c.get<std::string>();
  }
  std::printf("command       %s\n", cmd.c_str());
  std::printf("warm digest   %s\n", Str(warm, "digest").c_str());
  std::printf("canary        %s -> %s\n", canary.value("prompt", json("")).dump().c_str(),
              canary.value("text", json("")).dump().c_str());
  std::printf("              tokens %s\n", Str(canary, "tokens").c_str());
  std::printf("              warm latency %s, bound %s (first request at build %s)\n",
              Ms(canary.value("warm_latency_ms", 0.0)).c_str(), Ms(canary.value("latency_bound_ms", 0.0)).c_str(),
              Ms(canary.value("first_latency_ms", 0.0)).c_str());
  std::printf("timings      ");
  const json timings = m.value("timings_ms", json::object());
  for (const auto& [k, v] : timings.items()) {
    if (v.is_number()) std::printf(" %s %s;", k.c_str(), Ms(v.get<double>()).c_str());
  }
  std::printf("\n\n%-40s %12s %12s %7s %7s\n", "section", "raw", "stored", "ratio", "chunks");
  // Small CRIU images are many; group them unless asked for all.
  uint64_t small_raw = 0, small_stored = 0, small_n = 0, small_chunks = 0;
  for (const auto& s : rd.sections()) {
    if (!a.all_sections && s.raw_size < (64u << 10)) {
      small_raw += s.raw_size;
      small_stored += s.stored_size;
      small_chunks += s.chunks.size();
      ++small_n;
      continue;
    }
    std::printf("%-40s %12s %12s %7s %7zu\n", s.name.c_str(), HumanBytes(s.raw_size).c_str(),
                HumanBytes(s.stored_size).c_str(), Ratio(s.stored_size, s.raw_size).c_str(), s.chunks.size());
  }
  if (small_n) {
    std::string label = std::to_string(small_n) + " smaller sections (--all to list)";
    std::printf("%-40s %12s %12s %7s %7llu\n", label.c_str(), HumanBytes(small_raw).c_str(),
                HumanBytes(small_stored).c_str(), Ratio(small_stored, small_raw).c_str(),
                static_cast<unsigned long long>(small_chunks));
  }
  std::printf("%-40s %12s %12s %7s %7llu\n", "total", HumanBytes(raw).c_str(), HumanBytes(stored).c_str(),
              Ratio(stored, raw).c_str(), static_cast<unsigned long long>(chunks));
  return kExitOk;
}

int RunVerify(const std::string& path, bool json_out) {
  auto r = snapfile::SnapshotReader::Open(path);
  if (!r.ok()) return Fail(r.status());
  Progress p("verifying");
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*r)->Verify(0, [&](uint64_t d, uint64_t t) { p.Update(d, t); });
  p.Finish();
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  size_t chunks = 0;
  for (const auto& sec : (*r)->sections()) chunks += sec.chunks.size();
  if (json_out) {
    json out = {{"path", path}, {"ok", s.ok()}, {"sections", (*r)->sections().size()}, {"chunks", chunks},
                {"elapsed_ms", ms}};
    if (!s.ok()) out["error"] = s.message();
    std::printf("%s\n", out.dump().c_str());
    return s.ok() ? kExitOk : ExitCodeFor(s);
  }
  if (!s.ok()) return Fail(s);
  std::printf("%s: OK (%zu sections, %zu chunks, %s, digest %s, checked in %s)\n", path.c_str(),
              (*r)->sections().size(), chunks, HumanBytes((*r)->file_size()).c_str(),
              (*r)->file_digest_hex().c_str(), Ms(ms).c_str());
  return kExitOk;
}

}  // namespace

Runner AddInspect(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  app.add_option("snapshot", a->snapshot, "Snapshot file")->required();
  app.add_flag("--json", a->json_out, "Print everything as JSON (manifest included)");
  app.add_flag("--all", a->all_sections, "List every section, small ones included");
  return [a] { return RunInspect(*a); };
}

Runner AddVerify(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  app.footer("Check every chunk checksum and the whole-file digest; report the first bad\n"
                  "section, chunk and byte offset. Exit 0 when intact, 4 when not.");
  app.add_option("snapshot", *path, "Snapshot file")->required();
  app.add_flag("--json", *json_out, "Print the result as JSON");
  return [path, json_out] { return RunVerify(*path, *json_out); };
}

}  // namespace hotboot::cli
