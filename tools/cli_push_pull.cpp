// hotboot push / hotboot pull: snapshots to and from an OCI registry.
#include <cstdio>
#include <memory>

#include "cli_common.h"
#include "cli_remote.h"
#include "cli_trust.h"
#include "commands.h"
#include "hotboot/cache.h"
#include "hotboot/fetch.h"
#include "hotboot/job.h"
#include "hotboot/restore.h"
#include "hotboot/signing.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct PushArgs {
  std::string snapshot;
  std::string ref;
  RemoteArgs remote;
  std::vector<std::string> mount_from;
  bool json_out = false;
};

int RunPush(const PushArgs& a) {
  auto ref = fetch::ParseOciRef(a.ref);
  if (!ref.ok()) return FailJson(ref.status(), a.json_out);
  fetch::PushOptions o;
  o.remote = RemoteOptionsOf(a.remote);
  o.mount_from = a.mount_from;
  o.progress = ProgressPrinter("push", a.json_out);
  auto r = fetch::Push(a.snapshot, *ref, o);
  EndProgress();
  if (!r.ok()) return FailJson(r.status().Prefixed("push " + a.snapshot + " to " + a.ref), a.json_out);
  if (a.json_out) {
    json parts = json::array();
    for (const auto& p : r->parts) {
      parts.push_back({{"digest", p.part.digest},
                       {"size", p.part.size},
                       {"offset", p.part.offset},
                       {"sections", p.part.sections},
                       {"own_section", p.part.own_section},
                       {"uploaded", p.uploaded},
                       {"mounted", p.mounted}});
    }
    std::printf("%s\n", json{{"ok", true},
                             {"ref", r->ref},
                             {"digest", r->digest},
                             {"config_digest", r->config_digest},
                             {"bytes_total", r->bytes_total},
                             {"bytes_uploaded", r->bytes_uploaded},
                             {"blobs", parts}}
                            .dump()
                            .c_str());
    return kExitOk;
  }
  int uploaded = 0, mounted = 0;
  for (const auto& p : r->parts) {
    uploaded += p.uploaded;
    mounted += p.mounted;
  }
  std::printf("pushed %s as %s@%s: %zu blobs, %d uploaded (%s of %s), %d mounted, %zu already there\n",
              a.snapshot.c_str(), r->ref.c_str(), r->digest.c_str(), r->parts.size(), uploaded,
              HumanBytes(r->bytes_uploaded).c_str(), HumanBytes(r->bytes_total).c_str(), mounted,
              r->parts.size() - uploaded - mounted);
  return kExitOk;
}

struct PullArgs {
  std::string ref;
  RemoteArgs remote;
  TrustArgs trust;
  bool json_out = false;
};

// Everything a restore of `ref` would fetch, into the node cache; the
// weights it provides decoded into this host's weights directory (when it is
// the build's), so that the restore then fetches nothing but the manifest.
int RunPull(const PullArgs& a) {
  auto policy = LoadPolicy(a.trust);
  if (!policy.ok()) return FailJson(policy.status().Prefixed("trust policy"), a.json_out);
  // Temporaries of this pull are removed by its janitor whatever ends it.
  auto job = host::Job::Start({.kind = "pull"});
  if (!job.ok()) return FailJson(job.status(), a.json_out);
  auto src = OpenRemote(a.ref, a.remote, a.json_out, *job);
  if (!src.ok()) return FailJson(src.status(), a.json_out);
  auto reader = snapfile::SnapshotReader::Open(*src);
  if (!reader.ok()) return FailJson(reader.status(), a.json_out);
  if (Status t = snapfile::CheckTrust(**reader, *policy); !t.ok()) return FailJson(t, a.json_out);
  auto manifest = ParseManifest((*reader)->manifest_json());
  if (!manifest.ok()) return FailJson(manifest.status().Prefixed(a.ref), a.json_out);
  const bool signature_checked = policy->in_force();
  std::optional<SafeDir> weights;
  std::string weights_note;
  auto dir = CheckProvidedFiles(*manifest, **reader);
  if (dir.ok()) {
    weights = std::move(dir).value();
  } else if (dir.status().code() == Code::kIncompatible) {
    // Still worth caching the blobs; a restore here would refuse the same way.
    weights_note = "weights not placed: " + dir.status().message();
    Note("warning: " + weights_note);
  } else {
    return FailJson(dir.status(), a.json_out);
  }
  auto reused = ReusedSections(*manifest, weights, signature_checked);
  if (!reused.ok()) return FailJson(reused.status(), a.json_out);
  (*src)->PrefetchAllBut(**reader, *reused);
  Status placed = weights ? PlaceProvidedFiles(*manifest, **reader, *weights, 0, signature_checked) : Status::Ok();
  Status done = placed.ok() ? (*src)->Finish() : placed;
  EndProgress();
  if (!done.ok()) return FailJson(done.Prefixed("pull " + a.ref), a.json_out);
  const fetch::FetchStats st = (*src)->stats();
  if (a.json_out) {
    json out = {{"ok", true}, {"ref", a.ref}, {"digest", st.resolved}};
    out.update(FetchJson(st));
    out["weights_dir"] = weights ? weights->path() : "";
    out["weights_reused"] = *reused;
    if (!weights_note.empty()) out["warning"] = weights_note;
    out["trust"] = TrustJson((*reader)->trust(), &*policy);
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("pulled %s (%s): %s fetched, %s from the node cache, %s not needed%s\n", a.ref.c_str(),
                st.resolved.c_str(), HumanBytes(st.bytes_fetched).c_str(), HumanBytes(st.bytes_from_cache).c_str(),
                HumanBytes(st.bytes_skipped).c_str(),
                weights ? ("; weights in " + weights->path()).c_str() : "");
  }
  return kExitOk;
}

}  // namespace

Runner AddPush(CLI::App& app) {
  auto a = std::make_shared<PushArgs>();
  app.footer(
      "Upload a snapshot to an OCI registry as an artifact (formats/OCI.md): its layers are byte\n"
      "ranges of the file -- each large section (weights, big memory images) a blob of its own,\n"
      "the rest together -- so snapshots that share weights share their blob, and a re-push\n"
      "uploads only what the registry lacks (checked by digest; --mount-from mounts blobs from\n"
      "other repositories of the same registry). Uploads are chunked. Sign before pushing: the\n"
      "signatures travel inside the snapshot's bytes.\n"
      "Credentials: --authfile, else $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,\n"
      "~/.docker/config.json (what `podman login` / `docker login` write).");
  app.add_option("snapshot", a->snapshot, "Snapshot file")->required()->check(CLI::ExistingFile);
  app.add_option("ref", a->ref, "Where: oci://HOST[:PORT]/REPO:TAG")->required();
  app.add_option("--mount-from", a->mount_from, "Repository on the same registry to mount missing blobs from");
  AddRemoteOptions(app, &a->remote, /*with_cache=*/false);
  app.add_flag("--json", a->json_out, "Print the result as one JSON line (also on failure); progress as JSON lines on stderr");
  return [a] { return RunPush(*a); };
}

Runner AddPull(CLI::App& app) {
  auto a = std::make_shared<PullArgs>();
  app.footer(
      "Fetch what a restore of REF needs into this node's cache, ahead of time (pre-warm a node):\n"
      "the snapshot's blobs into the node cache, its weights decoded into this host's weights\n"
      "directory ($HOTBOOT_WEIGHTS_DIR; only when it is the build's). Every chunk is checked\n"
      "against its SHA-256 and every blob against its digest before it is kept; with a trust\n"
      "policy in force an untrusted snapshot is refused (exit 7) before its sections are fetched.\n"
      "A later `hotboot restore REF` then fetches only the manifest.");
  app.add_option("ref", a->ref, "oci://HOST[:PORT]/REPO[:TAG|@sha256:...] or an http(s):// URL")->required();
  AddRemoteOptions(app, &a->remote, /*with_cache=*/true);
  AddTrustOptions(app, &a->trust);
  app.add_flag("--json", a->json_out, "Print the result as one JSON line (also on failure); progress as JSON lines on stderr");
  return [a] { return RunPull(*a); };
}

}  // namespace hotboot::cli
