// ParseManifest (formats/SPEC.md "Manifest (JSON)"): every field typed and
// bounded, a bad one named by its JSON path; version 1 still read; ToJson
// round-trips. Issue 12: a wrong JSON type aborted restore (exit 134).
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"

namespace hotboot {
namespace {

using json = nlohmann::json;

const std::string kHash = "9c9f7113a3b35b762c88009992694fc9";

// What the builder writes for the reference server (cooperative), as JSON.
json Cooperative() {
  Manifest m;
  m.tool_version = "0.1.0";
  m.created_at = "2026-12-02T02:35:58Z";
  m.host = {"vm", "6.18.44", "x86_64", "AMD EPYC", 2, {"avx2", "fma"}};
  m.criu = {"4.2.1", 15378728, 4};
  m.process.command = {"/usr/bin/hotboot-server", "--port", "0", "--control-stdio"};
  m.process.cwd = "/";
  m.process.fd_keys = {"pipe:[1]", "pipe:[2]", "pipe:[3]"};
  m.process.mapped_files = {{"/usr/lib/x86_64-linux-gnu/libc.so.6", 1926232, "aff81b5f1b6787f0964098e82b64475f"}};
  m.process.provided_files = {{"weights-" + kHash + ".bin", 22052864, "weights/weights-" + kHash + ".bin", kHash}};
  m.process.weights_dir = "/dev/shm/hotboot-weights";
  m.server = {"127.0.0.1", 40000, "b-1"};
  m.warm.digest = "9f5089ad0eae4961c4cd0b732389e74d";
  m.warm.canary.prompt = "The quick brown fox";
  m.warm.canary.max_tokens = 8;
  m.warm.canary.tokens = {5664, 1964, 6556};
  m.warm.canary.text = "her";
  m.warm.canary.latency_bound_ms = 519.7;
  m.timings_ms = {{"criu_dump", 176.2}, {"launch_to_warm", 6784.1}};
  m.labels = {{"preset", "tiny"}};
  return ToJsonValue(m);
}

json Transparent() {
  json j = Cooperative();
  j["mode"] = "transparent";
  j["warm"] = {{"digest", ""},
               {"canary",
                {{"request", {{"method", "POST"}, {"path", "/generate"}, {"body", "{}"}}},
                 {"compare", "/tokens"},
                 {"expected", {1, 2, 3}}}}};
  j["http"] = {{"port", 8000}, {"ready_path", "/health"}, {"after_restore", {{"path", "/ar"}}}};
  j["gpu"] = {{"driver_version", "580.65.06"},
              {"cuda_version", 13000},
              {"processes", 1},
              {"devices",
               {{{"ordinal", 0},
                 {"uuid", "GPU-1"},
                 {"name", "NVIDIA H100"},
                 {"compute_capability", "9.0"},
                 {"total_bytes", 1},
                 {"used_bytes", 1}}}}};
  return j;
}

Status Parse(const json& j) { return ParseManifest(j.dump()).status(); }

#define EXPECT_CORRUPT_NAMING(j, text)                                                  \
  do {                                                                                  \
    Status s_ = Parse(j);                                                               \
    EXPECT_EQ(s_.code(), Code::kCorrupt) << s_.ToString();                              \
    EXPECT_NE(s_.message().find(text), std::string::npos) << "wanted '" << (text)      \
                                                           << "' in: " << s_.message(); \
  } while (0)

TEST(Manifest, WhatTheBuilderWritesParsesAndRoundTrips) {
  for (const json& j : {Cooperative(), Transparent()}) {
    auto m = ParseManifest(j.dump());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(ToJson(*m), ToJson(*ParseManifest(ToJson(*m))));
  }
  auto t = ParseManifest(Transparent().dump());
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->transparent());
  ASSERT_TRUE(t->http && t->http->after_restore);
  EXPECT_EQ(t->http->after_restore->path, "/ar");
  EXPECT_EQ(t->http->after_restore->method, "GET");  // omitted: the default
  ASSERT_TRUE(t->gpu);
  EXPECT_EQ(t->gpu->devices.at(0).cc_major, 9);
  EXPECT_EQ(t->warm.canary.expected, json({1, 2, 3}));
}

// The 1b preset's canary answer held a NUL (a model emits any token): the
// builder's read-back check refused its own manifest and no 1b snapshot could
// be built. Free text may hold any character; names and paths may not.
TEST(Manifest, Regression_ACanaryAnswerWithANulIsFreeText) {
  json j = Cooperative();
  j["warm"]["canary"]["text"] = std::string("a\0b", 3);
  j["warm"]["canary"]["prompt"] = std::string("p\0", 2);
  auto m = ParseManifest(j.dump());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->warm.canary.text, std::string("a\0b", 3));
  EXPECT_EQ(ToJson(*m), ToJson(*ParseManifest(ToJson(*m))));
  json k = Cooperative();
  k["process"]["cwd"] = std::string("/a\0b", 4);
  EXPECT_CORRUPT_NAMING(k, "NUL");
}

TEST(Manifest, NotJsonOrNotAnObjectOrAnotherFormatIsCorrupt) {
  EXPECT_EQ(ParseManifest("{").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParseManifest("").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParseManifest("[1]").status().code(), Code::kCorrupt);
  EXPECT_CORRUPT_NAMING(json::object(), "format: missing");
  json j = Cooperative();
  j["format"] = "something-else";
  EXPECT_CORRUPT_NAMING(j, "not a hotboot snapshot manifest");
}

TEST(Manifest, ANewerVersionIsUnsupportedAndUnknownKeysAreIgnored) {
  json j = Cooperative();
  j["manifest_version"] = kManifestVersion + 1;
  EXPECT_EQ(Parse(j).code(), Code::kUnsupported);
  j = Cooperative();
  j["future_key"] = {{"anything", {1, 2}}};
  j["process"]["future_key"] = "x";
  EXPECT_TRUE(Parse(j).ok()) << Parse(j).ToString();
}

// The issue's example, and a wrong JSON type in every object of the
// manifest: Corrupt naming the path, never a throw.
TEST(Manifest, Issue12_AWrongTypeAnywhereIsCorruptNamingTheField) {
  json j = Cooperative();
  j["process"]["provided_files"][0]["size"] = "22052864";
  EXPECT_CORRUPT_NAMING(j, "manifest: process.provided_files[0].size: expected an unsigned integer, got a string");
  const std::vector<std::pair<json::json_pointer, std::string>> fields = {
      {json::json_pointer("/host/kernel"), "host.kernel"},
      {json::json_pointer("/host/isa_flags/0"), "host.isa_flags[0]"},
      {json::json_pointer("/criu/version"), "criu.version"},
      {json::json_pointer("/process/command/1"), "process.command[1]"},
      {json::json_pointer("/process/pid_namespace"), "process.pid_namespace"},
      {json::json_pointer("/process/fd_keys"), "process.fd_keys"},
      {json::json_pointer("/process/mapped_files/0/path"), "process.mapped_files[0].path"},
      {json::json_pointer("/process/mapped_files/0/size"), "process.mapped_files[0].size"},
      {json::json_pointer("/process/provided_files/0/name"), "process.provided_files[0].name"},
      {json::json_pointer("/process/provided_files/0/content_hash"), "process.provided_files[0].content_hash"},
      {json::json_pointer("/server/build_port"), "server.build_port"},
      {json::json_pointer("/warm/digest"), "warm.digest"},
      {json::json_pointer("/warm/canary"), "warm.canary"},
      {json::json_pointer("/warm/canary/tokens/0"), "warm.canary.tokens[0]"},
      {json::json_pointer("/warm/canary/max_tokens"), "warm.canary.max_tokens"},
      {json::json_pointer("/timings_ms/criu_dump"), "timings_ms.criu_dump"},
      {json::json_pointer("/process"), "process"},
      {json::json_pointer("/host"), "host"},
  };
  for (const auto& [ptr, path] : fields) {
    for (const json& wrong : {json("x"), json({{"o", 1}}), json::array({1}), json(nullptr), json(-1.5)}) {
      json bad = Cooperative();
      if (bad.at(ptr).type() == wrong.type()) continue;
      bad[ptr] = wrong;
      EXPECT_CORRUPT_NAMING(bad, "manifest: " + path + ":");
    }
  }
  const std::vector<std::pair<json::json_pointer, std::string>> transparent = {
      {json::json_pointer("/http/port"), "http.port"},
      {json::json_pointer("/http/ready_path"), "http.ready_path"},
      {json::json_pointer("/http/after_restore"), "http.after_restore"},
      {json::json_pointer("/warm/canary/request"), "warm.canary.request"},
      {json::json_pointer("/warm/canary/request/path"), "warm.canary.request.path"},
      {json::json_pointer("/gpu/processes"), "gpu.processes"},
      {json::json_pointer("/gpu/devices/0/compute_capability"), "gpu.devices[0].compute_capability"},
      {json::json_pointer("/gpu/devices/0"), "gpu.devices[0]"},
  };
  for (const auto& [ptr, path] : transparent) {
    json bad = Transparent();
    bad[ptr] = json::array({true});
    EXPECT_CORRUPT_NAMING(bad, "manifest: " + path + ":");
  }
}

TEST(Manifest, AMissingRequiredFieldIsNamed) {
  for (const std::string key : {"/host", "/criu", "/process", "/warm", "/process/command", "/process/fd_keys",
                                "/process/mapped_files", "/process/provided_files", "/process/weights_dir",
                                "/warm/digest", "/warm/canary/tokens", "/process/provided_files/0/content_hash",
                                "/process/mapped_files/0/size"}) {
    json bad = Cooperative();
    const json::json_pointer ptr(key);
    bad[ptr.parent_pointer()].erase(ptr.back());
    std::string path = key.substr(1);
    for (auto& c : path) c = c == '/' ? '.' : c;
    // "process.provided_files.0.size" is written "process.provided_files[0].size".
    for (const std::string list : {"provided_files", "mapped_files"}) {
      const auto at = path.find(list + ".0");
      if (at != std::string::npos) path.replace(at + list.size(), 2, "[0]");
    }
    EXPECT_CORRUPT_NAMING(bad, "manifest: " + path + ": missing");
  }
  json t = Transparent();
  t.erase("http");
  EXPECT_CORRUPT_NAMING(t, "manifest: http: missing");
}

TEST(Manifest, NumbersCountsAndLengthsAreBounded) {
  json j = Cooperative();
  j["process"]["provided_files"][0]["size"] = uint64_t{1} << 51;
  EXPECT_CORRUPT_NAMING(j, "process.provided_files[0].size: 2251799813685248 is more than");
  j = Cooperative();
  j["process"]["pid_namespace"] = false;
  j["process"]["pids"] = {(int64_t{1} << 22) + 1};
  EXPECT_CORRUPT_NAMING(j, "process.pids[0]: 4194305 is out of range");
  j["process"]["pids"] = {0};
  EXPECT_CORRUPT_NAMING(j, "process.pids[0]: 0 is out of range");
  j = Transparent();
  j["http"]["port"] = 70000;
  EXPECT_CORRUPT_NAMING(j, "http.port: 70000 is out of range 1..65535");
  j = Cooperative();
  j["process"]["mapped_files"] = json::array();
  for (size_t i = 0; i <= kManifestMaxMappedFiles; ++i) j["process"]["mapped_files"].push_back({{"path", "/l"}, {"size", 1}});
  EXPECT_CORRUPT_NAMING(j, "process.mapped_files: 4097 elements, more than the 4096");
  j = Cooperative();
  j["process"]["command"] = {std::string(kManifestMaxString + 1, 'a')};
  EXPECT_CORRUPT_NAMING(j, "process.command[0]: a string of 65537 bytes");
  j = Cooperative();
  json deep = 1;
  for (int i = 0; i < 40; ++i) deep = json::array({deep});
  j["labels"] = deep;
  EXPECT_CORRUPT_NAMING(j, "labels: nested deeper than");
  j = Cooperative();
  j["timings_ms"]["pack"] = -3.0;
  EXPECT_CORRUPT_NAMING(j, "timings_ms.pack: a duration of -3.0 ms is out of range");
  j = Cooperative();
  j["process"]["mapped_files"][0]["content_hash"] = "XYZ";
  EXPECT_CORRUPT_NAMING(j, "process.mapped_files[0].content_hash: 'XYZ' is not 32 lowercase hex");
}

// No path in a provided file: a name that is its content hash, a section of
// that name, and the build's weights directory (absolute, normal).
TEST(Manifest, Issue12_AProvidedFileIsItsContentHashNotAPath) {
  for (const std::string& name : std::vector<std::string>{"../../etc/cron.d/x", "/etc/passwd", "weights-" + kHash + ".bin/../x",
                                  "weights-" + kHash.substr(1) + "0.bin", "WEIGHTS-" + kHash + ".bin", "x.bin"}) {
    json j = Cooperative();
    j["process"]["provided_files"][0]["name"] = name;
    j["process"]["provided_files"][0]["section"] = "weights/" + name;
    EXPECT_CORRUPT_NAMING(j, "process.provided_files[0].name");
  }
  json j = Cooperative();
  j["process"]["provided_files"][0]["section"] = "criu/pages-1.img";
  EXPECT_CORRUPT_NAMING(j, "process.provided_files[0].section: 'criu/pages-1.img' is not weights/");
  for (const std::string dir : {"relative/dir", "/dev/shm/../etc", "/a/./b", "/a//b"}) {
    j = Cooperative();
    j["process"]["weights_dir"] = dir;
    EXPECT_CORRUPT_NAMING(j, "process.weights_dir");
  }
  j = Cooperative();
  j["process"]["provided_files"].push_back(j["process"]["provided_files"][0]);
  EXPECT_CORRUPT_NAMING(j, "is provided twice");
}

// Version 1 (the previous hotboot): provided files named by path. They still
// read when the file name is the content-hash name, mapped to the new rule.
TEST(Manifest, Version1StillReadsUnderTheContentHashRule) {
  json v1 = Cooperative();
  v1["manifest_version"] = 1;
  v1["process"].erase("weights_dir");
  v1["process"]["mapped_files"][0].erase("content_hash");
  v1["process"]["provided_files"] = {{{"path", "/dev/shm/hotboot-weights/weights-" + kHash + ".bin"},
                                      {"size", 22052864},
                                      {"section", "weights/weights-" + kHash + ".bin"}}};
  auto m = ParseManifest(v1.dump());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->manifest_version, 1);
  EXPECT_EQ(m->process.weights_dir, "/dev/shm/hotboot-weights");
  ASSERT_EQ(m->process.provided_files.size(), 1u);
  EXPECT_EQ(m->process.provided_files[0].name, "weights-" + kHash + ".bin");
  EXPECT_EQ(m->process.provided_files[0].content_hash, kHash);
  EXPECT_TRUE(m->process.mapped_files[0].content_hash.empty());  // size check only
  EXPECT_TRUE(ParseManifest(ToJson(*m)).ok());                    // written back as version 2

  for (const std::string& path : std::vector<std::string>{"/tmp/evil/x.bin", "/dev/shm/../etc/weights-" + kHash + ".bin",
                                 "relative/weights-" + kHash + ".bin", "/weights-" + kHash + ".bin"}) {
    json bad = v1;
    bad["process"]["provided_files"][0]["path"] = path;
    EXPECT_CORRUPT_NAMING(bad, "process.provided_files[0].path");
  }
}

TEST(Manifest, ContentNames) {
  std::string h;
  EXPECT_TRUE(ParseContentName("weights-" + kHash + ".bin", &h));
  EXPECT_EQ(h, kHash);
  EXPECT_TRUE(ParseContentName("gpu-weights-" + kHash + ".bin", &h));
  EXPECT_FALSE(ParseContentName("weights-" + kHash + ".bin.tmp", &h));
  EXPECT_FALSE(ParseContentName("gpu-weights-" + kHash, &h));
  EXPECT_FALSE(IsContentHash("9C9F7113A3B35B762C88009992694FC9"));
}

}  // namespace
}  // namespace hotboot
