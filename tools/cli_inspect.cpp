#include <cstdio>
#include <map>
#include <memory>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/manifest.h"
#include "cli_trust.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct InspectArgs {
  std::string snapshot;
  std::string base;
  std::string section;  // --section: one section's chunks
  std::string extract;  // --extract FILE: that section's bytes
  bool json_out = false;
  bool all_sections = false;
};

std::string Ratio(uint64_t stored, uint64_t raw);

// "zstd/planes2 x3, zero x1": how a section's chunks are stored.
std::string Encodings(const snapfile::SectionInfo& s) {
  if (s.is_ref) return "ref (base)";
  std::map<std::string, int> n;
  for (const auto& c : s.chunks) {
    std::string k = snapfile::MethodName(c.method);
    if (c.transform != snapfile::Transform::kNone) k += std::string("/") + snapfile::TransformName(c.transform);
    ++n[k];
  }
  std::string out;
  for (const auto& [k, v] : n) out += (out.empty() ? "" : ", ") + k + " x" + std::to_string(v);
  return out.empty() ? "-" : out;
}

json SectionJson(const snapfile::SectionInfo& s, bool chunks) {
  json j = {{"name", s.name},           {"raw_bytes", s.raw_size},     {"stored_bytes", s.stored_size},
            {"chunks", s.chunks.size()}, {"mode", s.mode},              {"elem", snapfile::ElemTypeName(s.elem)},
            {"ref", s.is_ref},           {"content_hash", s.content_hash.Hex()}, {"encodings", Encodings(s)}};
  if (chunks) {
    json cs = json::array();
    for (const auto& c : s.chunks) {
      cs.push_back({{"offset", c.offset}, {"raw_bytes", c.raw_size}, {"stored_bytes", c.stored_size},
                    {"method", snapfile::MethodName(c.method)}, {"transform", snapfile::TransformName(c.transform)},
                    {"stored_hash", c.stored_hash}, {"raw_hash", c.raw_hash}});
    }
    j["chunk_list"] = cs;
  }
  return j;
}

int InspectSection(const InspectArgs& a, const snapfile::SnapshotReader& rd) {
  const snapfile::SectionInfo* s = rd.FindSection(a.section);
  if (!s) return Fail(NotFound(a.snapshot + ": no section '" + a.section + "' (hotboot inspect --all lists them)"));
  if (!a.extract.empty()) {
    Progress p("extracting");
    Status st = rd.ExtractSection(a.section, a.extract, 0, [&](uint64_t d, uint64_t t) { p.Update(d, t); });
    p.Finish();
    if (!st.ok()) return Fail(st);
    if (!a.json_out) std::printf("wrote %s (%s) to %s\n", s->name.c_str(), HumanBytes(s->raw_size).c_str(), a.extract.c_str());
  }
  if (a.json_out) {
    std::printf("%s\n", SectionJson(*s, true).dump(2).c_str());
    return kExitOk;
  }
  if (!a.extract.empty()) return kExitOk;
  std::printf("section       %s\n", s->name.c_str());
  std::printf("content       %s, %s, mode %04o, XXH3-128 %s\n", HumanBytes(s->raw_size).c_str(),
              snapfile::ElemTypeName(s->elem), s->mode, s->content_hash.Hex().c_str());
  if (s->is_ref) {
    std::printf("stored        in the base snapshot %s (digest %s)\n", rd.base().name.c_str(), rd.base().digest.Hex().c_str());
    return kExitOk;
  }
  std::printf("stored        %s in %zu chunks (%s), record at byte %llu\n\n", HumanBytes(s->stored_size).c_str(),
              s->chunks.size(), Ratio(s->stored_size, s->raw_size).c_str(), static_cast<unsigned long long>(s->offset));
  std::printf("%6s %14s %12s %12s %7s %-6s %-8s %s\n", "chunk", "file offset", "raw", "stored", "ratio", "method",
              "transform", "raw XXH3-64");
  for (size_t i = 0; i < s->chunks.size(); ++i) {
    const auto& c = s->chunks[i];
    std::printf("%6zu %14llu %12s %12s %7s %-6s %-8s %016llx\n", i, static_cast<unsigned long long>(c.offset),
                HumanBytes(c.raw_size).c_str(), HumanBytes(c.stored_size).c_str(),
                Ratio(c.stored_size, c.raw_size).c_str(), snapfile::MethodName(c.method),
                snapfile::TransformName(c.transform), static_cast<unsigned long long>(c.raw_hash));
  }
  return kExitOk;
}

std::string Ratio(uint64_t stored, uint64_t raw) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.1f%%", raw ? 100.0 * static_cast<double>(stored) / static_cast<double>(raw) : 0.0);
  return buf;
}

// How a replica restored from this snapshot gets a new instance id and
// fresh entropy (server/CONTROL.md "Uniqueness"): the control protocol's
// after_restore, a transparent server's after_restore HTTP hook, or nothing.
json AfterRestore(const Manifest& m) {
  if (!m.transparent()) {
    return {{"via", "control"}, {"text", "control protocol after_restore (new instance id, fresh entropy)"}};
  }
  if (!m.http || !m.http->after_restore) {
    return {{"via", "none"},
            {"text", "none — replicas restored from this snapshot share the build's random state"}};
  }
  const ManifestHttpCall& hook = *m.http->after_restore;
  return {{"via", "http"}, {"request", hook.method + " " + hook.path},
          {"text", hook.method + " " + hook.path + " (with Hotboot-Instance, Hotboot-Entropy)"}};
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// The parts of the manifest the text view shows, from the typed record.
void PrintManifest(const Manifest& m) {
  std::printf("created       %s by hotboot %s (%s mode)\n", OrDash(m.created_at).c_str(),
              OrDash(m.tool_version).c_str(), m.mode.c_str());
  std::printf("build host    %s, %s, kernel %s, %d CPUs: %s\n", OrDash(m.host.hostname).c_str(),
              OrDash(m.host.arch).c_str(), OrDash(m.host.kernel).c_str(), m.host.cpus,
              OrDash(m.host.cpu_model).c_str());
  std::printf("CRIU          %s, images %s\n", OrDash(m.criu.version).c_str(), HumanBytes(m.criu.images_bytes).c_str());
  if (m.gpu) {
    const ManifestGpu& gpu = *m.gpu;
    std::printf("GPU state     %d CUDA process(es), NVIDIA driver %s, CUDA %d.%d\n", gpu.processes,
                OrDash(gpu.driver_version).c_str(), gpu.cuda_version / 1000, gpu.cuda_version % 1000 / 10);
    for (const auto& d : gpu.devices) {
      std::printf("              GPU %d %s, sm %d.%d, %s, %s used by the captured processes\n", d.ordinal,
                  d.name.c_str(), d.cc_major, d.cc_minor, d.uuid.c_str(), HumanBytes(d.used_bytes).c_str());
    }
  }
  std::string cmd;
  for (const auto& c : m.process.command) cmd += (cmd.empty() ? "" : " ") + c;
  std::printf("command       %s\n", cmd.c_str());
  for (const auto& f : m.process.provided_files) {
    std::printf("provides      %s (%s) into the weights directory %s\n", f.name.c_str(), HumanBytes(f.size).c_str(),
                m.process.weights_dir.c_str());
  }
  const ManifestCanary& canary = m.warm.canary;
  if (m.transparent()) {  // a request from the spec
    const ManifestHttpCall req = canary.request.value_or(ManifestHttpCall{});
    std::printf("server        any HTTP server on port %d, ready when GET %s answers 200\n", m.http ? m.http->port : 0,
                m.http ? m.http->ready_path.c_str() : "-");
    std::printf("canary        %s %s %s\n", req.method.c_str(), req.path.c_str(), OrDash(req.body).c_str());
    const std::string expected = canary.expected.is_string() ? canary.expected.get<std::string>() : canary.expected.dump();
    std::printf("              %s must be %s\n", canary.compare.empty() ? "the whole answer" : canary.compare.c_str(),
                expected.substr(0, 200).c_str());
  } else {
    std::printf("warm digest   %s\n", OrDash(m.warm.digest).c_str());
    std::printf("canary        %s -> %s\n", json(canary.prompt).dump().c_str(), json(canary.text).dump().c_str());
    std::printf("              tokens %s\n", json(canary.tokens).dump().c_str());
  }
  std::printf("              warm latency %s, bound %s (first request at build %s)\n",
              Ms(canary.warm_latency_ms).c_str(), Ms(canary.latency_bound_ms).c_str(),
              Ms(canary.first_latency_ms).c_str());
  std::printf("after-restore %s\n", AfterRestore(m)["text"].get<std::string>().c_str());
  std::printf("timings      ");
  for (const auto& [k, v] : m.timings_ms) std::printf(" %s %s;", k.c_str(), Ms(v).c_str());
}

int RunInspect(const InspectArgs& a) {
  auto r = snapfile::SnapshotReader::Open(a.snapshot, {a.base});
  if (!r.ok()) return Fail(r.status());
  const auto& rd = **r;
  if (!a.section.empty()) return InspectSection(a, rd);
  auto parsed = ParseManifest(rd.manifest_json());
  if (!parsed.ok()) return Fail(parsed.status().Prefixed(a.snapshot));
  const Manifest& m = *parsed;
  uint64_t raw = 0, stored = 0, chunks = 0;
  for (const auto& s : rd.sections()) {
    raw += s.raw_size;
    stored += s.stored_size;
    chunks += s.chunks.size();
  }
  if (a.json_out) {
    json secs = json::array();
    for (const auto& s : rd.sections()) secs.push_back(SectionJson(s, false));
    json out = {{"path", a.snapshot},
                {"format_version", std::to_string(rd.version_major()) + "." + std::to_string(rd.version_minor())},
                {"file_bytes", rd.file_size()},
                {"raw_bytes", raw},
                {"stored_bytes", stored},
                {"file_digest", rd.file_digest_hex()},
                {"base", rd.base().digest.zero() ? json(nullptr)
                                                  : json{{"name", rd.base().name}, {"digest", rd.base().digest.Hex()},
                                                         {"found", rd.base_reader() != nullptr}}},
                {"sections", secs},
                {"trust", TrustJson(rd.trust(), nullptr)},
                {"after_restore", AfterRestore(m)},
                // The typed record as the current schema writes it; the
                // version the file was written with is beside it.
                {"manifest_version", m.manifest_version},
                {"manifest", ToJsonValue(m)}};
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("snapshot      %s\n", a.snapshot.c_str());
  std::printf("format        v%u.%u, %s, digest %s\n", rd.version_major(), rd.version_minor(),
              HumanBytes(rd.file_size()).c_str(), rd.file_digest_hex().c_str());
  for (const auto& line : TrustLines(rd.trust(), nullptr)) std::printf("trust         %s\n", line.c_str());
  if (!rd.base().digest.zero()) {
    std::printf("base          %s (digest %s)%s\n", rd.base().name.c_str(), rd.base().digest.Hex().c_str(),
                rd.base_reader() ? "" : " NOT FOUND: pass --base");
  }
  PrintManifest(m);
  std::printf("\n\n%-40s %12s %12s %7s %7s  %s\n", "section", "raw", "stored", "ratio", "chunks", "stored as");
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
    std::printf("%-40s %12s %12s %7s %7zu  %s\n", s.name.c_str(), HumanBytes(s.raw_size).c_str(),
                HumanBytes(s.stored_size).c_str(), Ratio(s.stored_size, s.raw_size).c_str(), s.chunks.size(),
                Encodings(s).c_str());
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

struct VerifyArgs {
  std::string path;
  std::string base;
  bool json_out = false;
  TrustArgs trust;
};

struct Checked {
  Status status;
  size_t sections = 0, chunks = 0;
  uint64_t bytes = 0;
  std::string digest;
  snapfile::TrustInfo trust;
  bool trust_read = false;          // the trust record (or its absence) is known
};

// "-": front to back from stdin, as it arrives (a pipe, a download).
Checked VerifyStream(const VerifyArgs& a, Progress& p) {
  Checked c;
  snapfile::StreamEvents ev;
  // The manifest is part of what restore uses: one that does not parse makes
  // the snapshot unusable however intact its bytes are.
  ev.on_manifest = [](const std::string& manifest_json, const snapfile::BaseRef&) {
    return ParseManifest(manifest_json).status();
  };
  ev.on_section = [&](const snapfile::SectionInfo&) {
    ++c.sections;
    return Status::Ok();
  };
  ev.on_data = [&](const snapfile::SectionInfo&, uint64_t, const std::string&) {
    ++c.chunks;
    return Status::Ok();
  };
  c.trust.version_major = 1;  // a stream without a trust record is 1.0
  ev.on_trust = [&](const snapfile::TrustInfo& t) {
    c.trust = t;
    return Status::Ok();
  };
  c.status = snapfile::DecodeStream(0, ev, 0, "<stdin>", [&](uint64_t d, uint64_t) {
    c.bytes = d;
    p.Update(d, 0);
  });
  return c;
}

Checked VerifyFile(const VerifyArgs& a, Progress& p) {
  Checked c;
  auto r = snapfile::SnapshotReader::Open(a.path, {a.base});
  if (!r.ok()) {
    c.status = r.status();
    return c;
  }
  if (auto m = ParseManifest((*r)->manifest_json()); !m.ok()) {
    c.status = m.status().Prefixed(a.path);
    return c;
  }
  c.status = (*r)->Verify(0, [&](uint64_t d, uint64_t t) { p.Update(d, t); });
  c.sections = (*r)->sections().size();
  for (const auto& sec : (*r)->sections()) c.chunks += sec.chunks.size();
  c.bytes = (*r)->file_size();
  c.digest = (*r)->file_digest_hex();
  c.trust = (*r)->trust();
  c.trust_read = true;
  return c;
}

int RunVerify(const VerifyArgs& a) {
  Progress p("verifying");
  const auto t0 = std::chrono::steady_clock::now();
  // The policy first: a trust directory that cannot be trusted is an error
  // before any byte is read.
  auto policy = LoadPolicy(a.trust);
  Checked c;
  if (policy.ok()) {
    c = a.path == "-" ? VerifyStream(a, p) : VerifyFile(a, p);
    c.trust_read |= a.path == "-" && c.status.ok();
  } else {
    c.status = policy.status();
  }
  p.Finish();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  Status s = c.status;
  // Intact; now whether the policy in force (if any) accepts its signatures.
  if (s.ok()) s = snapfile::CheckTrust(a.path, c.trust, *policy);
  if (a.json_out) {
    json out = {{"path", a.path}, {"ok", s.ok()}, {"sections", c.sections}, {"chunks", c.chunks},
                {"bytes", c.bytes}, {"elapsed_ms", ms}};
    if (!c.digest.empty()) out["file_digest"] = c.digest;
    if (c.trust_read) out["trust"] = TrustJson(c.trust, policy.ok() ? &*policy : nullptr);
    if (!s.ok()) {
      out["error"] = s.message();
      out["outcome"] = CodeName(s.code());
      out["exit_code"] = ExitCodeFor(s);
      MarkFailurePrinted();
    }
    std::printf("%s\n", out.dump().c_str());
    return s.ok() ? kExitOk : ExitCodeFor(s);
  }
  if (!s.ok()) {
    if (c.trust_read && s.code() == Code::kUntrusted) {
      for (const auto& line : TrustLines(c.trust, &*policy)) std::fprintf(stderr, "  %s\n", line.c_str());
    }
    return Fail(s);
  }
  std::printf("%s: OK (%zu sections, %zu chunks, %s%s%s, checked in %s)\n", a.path.c_str(), c.sections, c.chunks,
              HumanBytes(c.bytes).c_str(), c.digest.empty() ? "" : ", digest ", c.digest.c_str(), Ms(ms).c_str());
  for (const auto& line : TrustLines(c.trust, &*policy)) std::printf("  %s\n", line.c_str());
  return kExitOk;
}

}  // namespace

Runner AddInspect(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  app.add_option("snapshot", a->snapshot, "Snapshot file")->required();
  app.add_flag("--json", a->json_out, "Print everything as JSON (manifest included)");
  app.add_flag("--all", a->all_sections, "List every section, small ones included");
  app.add_option("--section", a->section, "Show one section: its content hash and every chunk (offset, method, transform)");
  app.add_option("--extract", a->extract, "With --section: write that section's bytes to this file (checked as read)");
  app.add_option("--base", a->base, "The base snapshot, for snapshots built with --base (default: next to it)");
  return [a] { return RunInspect(*a); };
}

Runner AddVerify(CLI::App& app) {
  auto a = std::make_shared<VerifyArgs>();
  app.footer("Check every record, chunk checksum, section content hash and the whole-file digest;\n"
             "report the first bad section, chunk and byte offset. SNAP '-' reads the snapshot\n"
             "front to back from stdin (e.g. curl ... | hotboot verify -).\n"
             "Format 1.1: every chunk's SHA-256 against the trust record, and each signature over the\n"
             "root, reported as 'signed by ed25519:... (trusted by the policy | no policy in force |\n"
             "not trusted)' or 'unsigned'. With a trust policy in force (--trust, or *.pub files in\n"
             "--trust-dir, default /etc/hotboot/trust.d, when it exists) a snapshot not signed by a\n"
             "trusted key is refused.\n"
             "Exit 0 when intact (and trusted), 4 when corrupt or truncated, 7 when the policy refuses\n"
             "it, 1 on other errors.");
  app.add_option("snapshot", a->path, "Snapshot file, or - for stdin")->required();
  app.add_option("--base", a->base, "The base snapshot, for snapshots built with --base (default: next to it)");
  app.add_flag("--json", a->json_out, "Print the result as JSON (ok, outcome, error, counts, trust)");
  AddTrustOptions(app, &a->trust);
  return [a] { return RunVerify(*a); };
}

}  // namespace hotboot::cli
