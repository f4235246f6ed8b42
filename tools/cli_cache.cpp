// `hotboot cache ls|gc|prune`: what the node cache (hotboot/cache.h) and the
// weights directory hold, and taking it back.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/cache.h"
#include "hotboot/node_cache.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct CacheArgs {
  std::string cache_dir;
  std::string weights_dir;
  std::string keep;
  bool json_out = false;
  bool dry_run = false;
};

// "40G", "500M", "1.5T", "123456", "2GiB", "10KB": binary units (K = 1024),
// as `hotboot cache ls` prints them. Nothing else: no spaces, no sign.
Result<uint64_t> ParseSize(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) return InvalidArgument("--keep '" + s + "': expected a size such as 40G, 500M, 1.5T or a byte count");
  size_t int_end = i;
  size_t frac_end = i;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    frac_end = i;
    if (frac_end == int_end + 1) return InvalidArgument("--keep '" + s + "': a digit must follow the '.'");
  }
  std::string unit = s.substr(i);
  int shift = 0;
  if (!unit.empty()) {
    const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0])));
    const std::string rest = unit.substr(1);
    const std::string units = "BKMGTP";
    const size_t k = units.find(u);
    const bool suffix_ok = u == 'B' ? rest.empty() : (rest.empty() || rest == "B" || rest == "iB");
    if (k == std::string::npos || !suffix_ok) {
      return InvalidArgument("--keep '" + s + "': unknown unit '" + unit + "' (use K, M, G, T or P; binary: 1K = 1024)");
    }
    shift = static_cast<int>(k) * 10;
  }
  if (frac_end != int_end && shift == 0) return InvalidArgument("--keep '" + s + "': a fraction of a byte");
  if (int_end > 19) return InvalidArgument("--keep '" + s + "': too large");
  const double v = std::stod(s.substr(0, frac_end)) * std::ldexp(1.0, shift);
  if (!(v < 9.2e18)) return InvalidArgument("--keep '" + s + "': too large");
  if (frac_end == int_end) {
    const uint64_t whole = std::stoull(s.substr(0, int_end));
    if (shift > 0 && whole > (UINT64_MAX >> shift)) return InvalidArgument("--keep '" + s + "': too large");
    return whole << shift;
  }
  return static_cast<uint64_t>(std::llround(v));
}

std::string Ago(int64_t unix_s) {
  const int64_t d = static_cast<int64_t>(std::time(nullptr)) - unix_s;
  if (d < 0) return "just now";
  if (d < 120) return std::to_string(d) + " s ago";
  if (d < 7200) return std::to_string(d / 60) + " min ago";
  if (d < 2 * 86400) return std::to_string(d / 3600) + " h ago";
  return std::to_string(d / 86400) + " d ago";
}

json ItemJson(const fetch::CacheItem& it) {
  return {{"kind", it.kind},   {"name", it.name},         {"path", it.path}, {"bytes", it.bytes},
          {"last_used_unix", it.last_used_unix}, {"in_use", it.in_use}, {"refs", it.refs}};
}

json ReportJson(const fetch::CacheReport& r) {
  json removed = json::array();
  for (const auto& it : r.removed) removed.push_back(ItemJson(it));
  return {{"removed", removed},
          {"freed_bytes", r.freed_bytes},
          {"kept_bytes", r.kept_bytes},
          {"skipped_in_use", r.skipped_in_use}};
}

json Where(const CacheArgs& a) { return {{"cache_dir", a.cache_dir}, {"weights_dir", a.weights_dir}}; }

int RunLs(const CacheArgs& a) {
  auto cache = fetch::NodeCache::Open(a.cache_dir, /*create=*/false);
  if (!cache.ok()) return FailJson(cache.status(), a.json_out, Where(a));
  auto items = (*cache)->List(a.weights_dir);
  if (!items.ok()) return FailJson(items.status(), a.json_out, Where(a));
  uint64_t total = 0, in_use = 0;
  for (const auto& it : *items) {
    total += it.bytes;
    if (it.in_use) in_use += it.bytes;
  }
  if (a.json_out) {
    json list = json::array();
    for (const auto& it : *items) list.push_back(ItemJson(it));
    json out = {{"ok", true}, {"items", list}, {"total_bytes", total}, {"in_use_bytes", in_use}};
    out["cache_dir"] = a.cache_dir;
    out["weights_dir"] = a.weights_dir;
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("%-8s %10s %-12s %-6s %s\n", "KIND", "SIZE", "LAST USED", "IN USE", "NAME / REFS");
  int blobs = 0, weights = 0, partials = 0;
  for (const auto& it : *items) {
    (it.kind == "blob" ? blobs : it.kind == "weights" ? weights : partials)++;
    std::string refs;
    for (const auto& r : it.refs) refs += (refs.empty() ? "  " : ", ") + r;
    std::printf("%-8s %10s %-12s %-6s %s%s\n", it.kind.c_str(), HumanBytes(it.bytes).c_str(),
                Ago(it.last_used_unix).c_str(), it.in_use ? "yes" : "-", it.name.c_str(), refs.c_str());
  }
  std::printf("%d blob(s), %d weights file(s), %d partial(s): %s on disk, %s in use  (cache %s, weights %s)\n", blobs,
              weights, partials, HumanBytes(total).c_str(), HumanBytes(in_use).c_str(), a.cache_dir.c_str(),
              a.weights_dir.c_str());
  return kExitOk;
}

void PrintReport(const CacheArgs& a, const fetch::CacheReport& r) {
  for (const auto& it : r.removed) {
    std::printf("%s %-8s %10s  %s\n", a.dry_run ? "would remove" : "removed", it.kind.c_str(),
                HumanBytes(it.bytes).c_str(), it.path.c_str());
  }
  for (const auto& p : r.skipped_in_use) std::printf("in use, kept %s\n", p.c_str());
  std::printf("%s %s, %s kept%s\n", a.dry_run ? "would free" : "freed", HumanBytes(r.freed_bytes).c_str(),
              HumanBytes(r.kept_bytes).c_str(), a.dry_run ? " (dry run: nothing removed)" : "");
}

// gc and prune: the cache is opened without creating it (nothing to collect
// in one that does not exist; the weights directory still counts).
int RunCollect(const CacheArgs& a, bool prune) {
  uint64_t keep = 0;
  if (prune) {
    auto k = ParseSize(a.keep);
    if (!k.ok()) return FailJson(k.status(), a.json_out, Where(a));
    keep = *k;
  }
  auto cache = fetch::NodeCache::Open(a.cache_dir, /*create=*/false);
  if (!cache.ok()) return FailJson(cache.status(), a.json_out, Where(a));
  auto rep = prune ? (*cache)->Prune(keep, a.weights_dir, a.dry_run) : (*cache)->Gc(a.weights_dir, a.dry_run);
  if (!rep.ok()) return FailJson(rep.status(), a.json_out, Where(a));
  if (a.json_out) {
    json out = ReportJson(*rep);
    out["ok"] = true;
    out["dry_run"] = a.dry_run;
    if (prune) out["keep_bytes"] = keep;
    out["cache_dir"] = a.cache_dir;
    out["weights_dir"] = a.weights_dir;
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  PrintReport(a, *rep);
  return kExitOk;
}

void CommonOptions(CLI::App& sub, CacheArgs* a) {
  sub.add_option("--cache-dir", a->cache_dir,
                 std::string("The node cache (default: $HOTBOOT_CACHE_DIR, else ") + fetch::kDefaultCacheDir + ")");
  sub.add_option("--weights-dir", a->weights_dir,
                 std::string("The weights directory (default: $HOTBOOT_WEIGHTS_DIR, else ") + kDefaultWeightsDir + ")");
  sub.add_flag("--json", a->json_out, "Print one JSON document on stdout (also on failure)");
}

}  // namespace

Runner AddCache(CLI::App& app) {
  auto a = std::make_shared<CacheArgs>();
  app.require_subcommand(1);
  app.footer(
      "The node cache holds what restores and pulls fetched, shared by every snapshot on this host:\n"
      "  DIR/blobs/sha256/HEX   complete blobs, each checked against its SHA-256 before it was named\n"
      "  DIR/tmp/HEX.PID.N      blobs being fetched        DIR/locks/HEX.lock  one fetch per blob (flock)\n"
      "  DIR/refs/*.json        what each reference (oci://...) last resolved to\n"
      "DIR is --cache-dir, else $HOTBOOT_CACHE_DIR, else /var/lib/hotboot/cache (owned by you, not writable\n"
      "by others). Decoded weights live in the weights directory as weights-<XXH3-128>.bin.\n"
      "gc removes partials no running fetch holds, lock files of absent blobs and blobs no recorded\n"
      "reference lists; it never removes weights files. prune removes blobs and weights files least\n"
      "recently used first (a blob's or file's mtime is its last use) until at most --keep remain.\n"
      "Neither removes anything in use: a file a running process maps (a replica's weights), or a blob\n"
      "being fetched or read (its lock is held); those are listed as kept.\n");
  CLI::App* ls = app.add_subcommand("ls", "List blobs, partial fetches and weights files: size, last use, in use, references");
  CommonOptions(*ls, a.get());
  CLI::App* gc = app.add_subcommand("gc", "Remove what is garbage: dead fetches' partials, unreferenced blobs, stale locks");
  CommonOptions(*gc, a.get());
  gc->add_flag("--dry-run", a->dry_run, "Say what would be removed; remove nothing");
  CLI::App* prune = app.add_subcommand("prune", "Remove least recently used blobs and weights files until at most --keep remain");
  CommonOptions(*prune, a.get());
  prune->add_option("--keep", a->keep, "What may stay: bytes, or with a binary unit (40G, 500M, 1.5T)")->required();
  prune->add_flag("--dry-run", a->dry_run, "Say what would be removed; remove nothing");
  return [a, ls, gc, prune] {
    a->cache_dir = fetch::ResolveCacheDir(a->cache_dir);
    a->weights_dir = ResolveWeightsDir(a->weights_dir);
    if (ls->parsed()) return RunLs(*a);
    if (gc->parsed()) return RunCollect(*a, false);
    if (prune->parsed()) return RunCollect(*a, true);
    return static_cast<int>(kExitUsage);
  };
}

}  // namespace hotboot::cli
