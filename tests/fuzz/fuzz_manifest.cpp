// libFuzzer target for the manifest parser (formats/SPEC.md "Manifest
// (JSON)"): ParseManifest must answer every input with a manifest or a
// Corrupt/Unsupported status naming the field, never crash, throw or abort.
// A manifest that parses is written back with ToJson, which must parse to the
// same record (compared through its JSON form): what the builder writes,
// restore reads.
#include <cstdint>
#include <string>
#include <string_view>

#include "hotboot/manifest.h"

using namespace hotboot;

namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = ParseManifest(text);
  if (!m.ok()) {
    const Code c = m.status().code();
    Check(c == Code::kCorrupt || c == Code::kUnsupported);
    Check(m.status().message().rfind("manifest: ", 0) == 0);
    return 0;
  }
  // Parsed fields hold their bounds.
  Check(m->process.provided_files.size() <= kManifestMaxProvidedFiles);
  Check(m->process.mapped_files.size() <= kManifestMaxMappedFiles);
  Check(m->process.command.size() <= kManifestMaxArgs && !m->process.command.empty());
  for (const auto& f : m->process.provided_files) {
    std::string hash;
    Check(ParseContentName(f.name, &hash) && hash == f.content_hash && f.size <= kManifestMaxSize);
    Check(f.section == "weights/" + f.name);
    Check(f.name.find('/') == std::string::npos);
  }
  for (auto p : m->process.pids) Check(p > 0 && p <= kManifestMaxPid);
  Check(m->mode == "cooperative" || m->mode == "transparent");
  Check(!m->transparent() || m->http.has_value());

  const std::string once = ToJson(*m);
  auto back = ParseManifest(once);
  Check(back.ok());
  Check(ToJson(*back) == once);
  return 0;
}
