// The phase-timeline picture (tools/timeline.h): well-formed SVG (parsed by
// python3's xml.etree in a subprocess), bars proportional to durations,
// text escaped, colours stable, and the lanes built from what hotboot
// measures.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "timeline.h"

namespace hotboot::cli {
namespace {

namespace fs = std::filesystem;

struct Bar {
  double x, y, w;
  std::string title;
};

// Every phase bar: <rect class="phase" x= y= width= ...><title>T</title>.
std::vector<Bar> Bars(const std::string& svg) {
  static const std::regex re(
      R"re(<rect class="phase" x="([0-9.]+)" y="([0-9.]+)" width="([0-9.]+)"[^>]*><title>([^<]*)</title>)re");
  std::vector<Bar> out;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back({std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), (*it)[4]});
  }
  return out;
}

const Bar* Find(const std::vector<Bar>& bars, const std::string& title_part) {
  for (const Bar& b : bars) {
    if (b.title.find(title_part) != std::string::npos) return &b;
  }
  return nullptr;
}

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "hotboot-timeline.XXXXXX").string();
    if (::mkdtemp(t.data())) path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// python3 parses the file as XML and checks the root and the bars; its
// output (or its error) comes back.
struct PyResult {
  int rc = -1;
  std::string out;
};
PyResult ParseWithPython(const std::string& svg_path) {
  const std::string script =
      "import sys, xml.etree.ElementTree as E\n"
      "r = E.parse(sys.argv[1]).getroot()\n"
      "ns = '{http://www.w3.org/2000/svg}'\n"
      "assert r.tag == ns + 'svg', r.tag\n"
      "assert r.get('version') == '1.1'\n"
      "bars = [e for e in r.iter(ns + 'rect') if e.get('class') == 'phase']\n"
      "print(len(bars), len([e for e in r.iter(ns + 'text')]))\n"
      "for e in r.iter(ns + 'text'):\n"
      "    if e.text and 'a<b' in e.text: print('LABEL', e.text)\n";
  const std::string py = fs::path(svg_path).parent_path() / "check.py";
  std::ofstream(py) << script;
  const std::string out_path = svg_path + ".out";
  const std::string cmd = "python3 " + py + " " + svg_path + " >" + out_path + " 2>&1";
  const int st = std::system(cmd.c_str());
  PyResult r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(out_path);
  r.out.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

std::vector<Lane> SampleLanes() {
  Lane cold{"cold boot", {{"process start", 0, 0.2}, {"weight read", 0.2, 1.2}, {"autotune", 1.2, 5.2}, {"warmup", 5.2, 9.2}}};
  cold.note = "first request 12 ms";
  Lane restore{"restore", {{"process start", 0, 0.05}, {"unpack", 0.05, 0.25}, {"criu restore", 0.25, 0.45}}};
  return {cold, restore};
}

TEST(Timeline, IsWellFormedSvgThatPythonParses) {
  if (std::system("python3 -c 'import xml.etree.ElementTree' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 is not here";
  }
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::vector<Lane> lanes = SampleLanes();
  lanes[0].label = "cold boot: a<b & \"c\" 'd' > e";  // text that must be escaped
  lanes[0].phases[1].name = "weights <read> & converted";
  TimelineOptions o;
  o.title = "where <the> seconds go & why";
  o.subtitle = "tiny \x01 control char";
  const std::string path = dir.path() + "/t.svg";
  ASSERT_TRUE(WriteTimelineFile(path, RenderTimelineSvg(lanes, o)).ok());
  PyResult r = ParseWithPython(path);
  ASSERT_EQ(r.rc, 0) << r.out;
  // 4 + 3 bars in the main panel, the restore's 3 again zoomed in.
  EXPECT_EQ(r.out.substr(0, r.out.find(' ')), "10") << r.out;
  // The label reads as written once unescaped.
  EXPECT_NE(r.out.find("LABEL cold boot: a<b & \"c\" 'd' > e"), std::string::npos) << r.out;

  // No lanes at all: still a picture.
  ASSERT_TRUE(WriteTimelineFile(path, RenderTimelineSvg({}, TimelineOptions{})).ok());
  r = ParseWithPython(path);
  EXPECT_EQ(r.rc, 0) << r.out;
}

TEST(Timeline, TextIsEscaped) {
  std::vector<Lane> lanes = SampleLanes();
  lanes[0].label = "a<b & c";
  lanes[0].phases[0].name = "x\"y'z>";
  TimelineOptions o;
  o.title = "<script>alert(1)</script>";
  const std::string svg = RenderTimelineSvg(lanes, o);
  EXPECT_EQ(svg.find("<script>"), std::string::npos);
  EXPECT_NE(svg.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b &amp; c"), std::string::npos);
  EXPECT_NE(svg.find("x&quot;y&apos;z&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
}

TEST(Timeline, BarWidthsAreProportionalToDurationsOnOneAxis) {
  TimelineOptions o;
  o.zoom_short_lanes = false;
  const std::vector<Bar> bars = Bars(RenderTimelineSvg(SampleLanes(), o));
  ASSERT_EQ(bars.size(), 7u);
  const Bar* read = Find(bars, "cold boot: weight read");
  const Bar* tune = Find(bars, "cold boot: autotune");
  const Bar* warm = Find(bars, "cold boot: warmup");
  const Bar* unpack = Find(bars, "restore: unpack");
  const Bar* start = Find(bars, "restore: process start");
  ASSERT_TRUE(read && tune && warm && unpack && start);
  // 1 s : 4 s : 0.2 s, across lanes: one axis.
  EXPECT_NEAR(tune->w / read->w, 4.0, 0.02);
  EXPECT_NEAR(warm->w, tune->w, 0.2);
  EXPECT_NEAR(read->w / unpack->w, 5.0, 0.1);
  // Bars start where their phase starts: x is linear in seconds.
  const double px_per_s = read->w / 1.0;
  EXPECT_NEAR(tune->x - read->x, 1.0 * px_per_s, 0.2);
  EXPECT_NEAR(unpack->x - start->x, 0.05 * px_per_s, 0.2);
  // Each lane below the previous one.
  EXPECT_GT(unpack->y, warm->y);
}

TEST(Timeline, ShortLanesAreDrawnAgainZoomedIn) {
  const std::string svg = RenderTimelineSvg(SampleLanes(), TimelineOptions{});
  const std::vector<Bar> bars = Bars(svg);
  ASSERT_EQ(bars.size(), 10u);  // the restore's 3 bars twice
  std::vector<const Bar*> unpacks;
  for (const Bar& b : bars) {
    if (b.title.find("restore: unpack") != std::string::npos) unpacks.push_back(&b);
  }
  ASSERT_EQ(unpacks.size(), 2u);
  // Zoomed in: the 0.45 s lane spans an axis of 0.45 s (a whole tick of
  // 0.05 s) instead of 10 s.
  EXPECT_NEAR(unpacks[1]->w / unpacks[0]->w, 10.0 / 0.45, 0.2);
  EXPECT_NE(svg.find("zoomed in"), std::string::npos);
}

TEST(Timeline, OverlappingPhasesGetTracksOfTheirOwn) {
  Lane l{"restore", {{"unpack", 0, 1}, {"weights (beside unpack)", 0.2, 1.5}, {"criu restore", 1.5, 2}}};
  TimelineOptions o;
  o.zoom_short_lanes = false;
  const std::vector<Bar> bars = Bars(RenderTimelineSvg({l}, o));
  const Bar* unpack = Find(bars, "unpack 1.00 s");
  const Bar* beside = Find(bars, "weights (beside unpack)");
  const Bar* criu = Find(bars, "criu restore");
  ASSERT_TRUE(unpack && beside && criu);
  EXPECT_GT(beside->y, unpack->y);
  EXPECT_EQ(criu->y, unpack->y);  // back to back is not overlapping
}

TEST(Timeline, LabelsTotalsAndLegend) {
  TimelineOptions o;
  o.zoom_short_lanes = false;
  const std::string svg = RenderTimelineSvg(SampleLanes(), o);
  EXPECT_NE(svg.find(">autotune 4.00 s<"), std::string::npos);    // fits in its bar
  EXPECT_NE(svg.find("process start 200 ms"), std::string::npos);  // beside or below
  EXPECT_NE(svg.find(">9.20 s<"), std::string::npos);              // the cold lane's total
  EXPECT_NE(svg.find(">450 ms<"), std::string::npos);              // the restore's
  EXPECT_NE(svg.find(">first request 12 ms<"), std::string::npos);
  // One legend entry per phase name, however many lanes have it.
  const size_t legend = svg.find("<g class=\"legend\">");
  ASSERT_NE(legend, std::string::npos);
  const std::string tail = svg.substr(legend);
  size_t n = 0;
  for (size_t p = 0; (p = tail.find(">process start<", p)) != std::string::npos; ++p) ++n;
  EXPECT_EQ(n, 1u);
  for (const char* name : {"weight read", "autotune", "warmup", "unpack", "criu restore"}) {
    EXPECT_NE(tail.find(std::string(">") + name + "<"), std::string::npos) << name;
  }
}

TEST(Timeline, ColoursAreStablePerPhaseName) {
  EXPECT_EQ(PhaseColour("warmup"), PhaseColour("warmup"));
  EXPECT_NE(PhaseColour("warmup"), PhaseColour("autotune"));
  EXPECT_EQ(PhaseColour("some phase nobody named"), PhaseColour("some phase nobody named"));
  EXPECT_TRUE(std::regex_match(PhaseColour("another"), std::regex("#[0-9a-f]{6}")));
  // The same name is the same fill in every lane.
  TimelineOptions o;
  o.zoom_short_lanes = false;
  const std::string svg = RenderTimelineSvg(SampleLanes(), o);
  const std::regex re(R"re(fill="(#[0-9a-f]{6})"[^>]*><title>[^:]*: process start )re");
  std::vector<std::string> fills;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    fills.push_back((*it)[1]);
  }
  ASSERT_EQ(fills.size(), 2u);
  EXPECT_EQ(fills[0], fills[1]);
}

TEST(Timeline, BootPhasesFromMetricsText) {
  const std::string text =
      "# HELP hotboot_boot_phase_seconds Time spent in each boot phase.\n"
      "hotboot_boot_phase_seconds{phase=\"weight_read\"} 0.5\n"
      "hotboot_boot_phase_seconds{phase=\"warmup\"} 2\n"
      "hotboot_boot_phase_seconds{phase=\"broken\"} not-a-number\n"
      "hotboot_boot_phase_seconds{phase=\"unterminated} 1\n"
      "hotboot_warmup_latency_seconds{shape=\"short_b1\",iteration=\"first\"} 0.1\n";
  const auto m = BootPhasesFromMetrics(text);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_DOUBLE_EQ(m.at("weight_read"), 500);
  EXPECT_DOUBLE_EQ(m.at("warmup"), 2000);
}

TEST(Timeline, ColdBootLaneFromTheServersPhases) {
  // The server's clock: listening at 10 ms, ready at 1000 ms; the launcher
  // saw ready at 1100 ms (exec and linking before the server's clock).
  const std::map<std::string, double> ph = {{"process_start_to_listen", 10}, {"weight_read", 100},
                                            {"weight_convert", 50},          {"compile_autotune", 300},
                                            {"warmup", 500},                 {"first_inference", 600},
                                            {"time_to_ready", 1000}};
  const Lane l = ColdBootLane("cold", ph, 1100);
  EXPECT_DOUBLE_EQ(l.total_s, 1.1);
  std::map<std::string, std::pair<double, double>> at;
  for (const Phase& p : l.phases) at[p.name] = {p.start_s, p.end_s};
  EXPECT_NEAR(at["process start"].second, 0.110, 1e-9);
  EXPECT_NEAR(at["weight read"].first, 0.110, 1e-9);
  EXPECT_NEAR(at["convert"].second, 0.260, 1e-9);
  // load: listen (10) to tune start (1000 - 500 - 300 = 200): read + convert
  // leave 40 ms, shown as what it is.
  EXPECT_NEAR(at["load (other)"].second - at["load (other)"].first, 0.040, 1e-9);
  EXPECT_NEAR(at["autotune"].first, 0.300, 1e-9);
  EXPECT_NEAR(at["first inference"].first, 0.600, 1e-9);
  EXPECT_NEAR(at["first inference"].second, 0.710, 1e-9);  // 600 ms after the boot started (10), +100
  EXPECT_NEAR(at["warmup"].first, 0.710, 1e-9);
  EXPECT_NEAR(at["warmup"].second, 1.1, 1e-9);
}

TEST(Timeline, RestoreLaneFromRestoreTimings) {
  const std::map<std::string, double> tm = {{"startup", 20},  {"check", 30},         {"unpack", 50},
                                            {"weights", 0.01}, {"criu_restore", 100}, {"after_restore", 10},
                                            {"verify", 40},   {"total", 260},        {"weights_overlapped", 45}};
  const Lane l = RestoreLane("restore", tm);
  EXPECT_DOUBLE_EQ(l.total_s, 0.26);
  std::vector<std::string> names;
  for (const Phase& p : l.phases) names.push_back(p.name);
  // weights took 0.01 ms (already in place): not drawn; 10 ms unaccounted: "other".
  EXPECT_EQ(names, (std::vector<std::string>{"process start", "open + check", "unpack", "criu restore", "after_restore",
                                             "verify", "other", "weights (beside unpack)"}));
  EXPECT_NEAR(l.phases[3].start_s, 0.100, 1e-4);
  EXPECT_NEAR(l.phases.back().start_s, 0.050, 1e-9);  // beside the unpack, from its start
}

// A GPU restore with the weights handoff (restore/src/restore.cpp): the
// handoff's thread (weights_handoff) runs from the end of the check beside
// unpack, CRIU and the driver's restore, on a track of its own; what the
// restore still waited for it (weights_handoff_wait) is a step between the
// driver's unlock and after_restore. Its parts (server_*, verify_canary,
// weights_handoff_release) are inside other steps: no bars of their own.
TEST(Timeline, RestoreLaneDrawsTheWeightsHandoffBesideAndItsWaitInLine) {
  const std::map<std::string, double> tm = {
      {"startup", 20},          {"check", 30},           {"unpack", 50},
      {"weights", 5},           {"criu_restore", 100},   {"gpu_check_wait", 0.01},
      {"gpu_restore", 150},     {"gpu_unlock", 5},       {"weights_handoff_wait", 40},
      {"after_restore", 60},    {"verify", 40},          {"total", 502},
      {"weights_handoff", 370}, {"gpu_check_overlapped", 200}, {"weights_handoff_release", 3},
      {"server_weight_adopt", 12}, {"server_total", 50}, {"verify_canary", 30}};
  const Lane l = RestoreLane("restore", tm);
  EXPECT_DOUBLE_EQ(l.total_s, 0.502);  // 2 ms of gaps: under 1%, no "other"
  std::vector<std::string> names;
  std::map<std::string, std::pair<double, double>> at;
  for (const Phase& p : l.phases) {
    names.push_back(p.name);
    at[p.name] = {p.start_s, p.end_s};
  }
  EXPECT_EQ(names, (std::vector<std::string>{"process start", "open + check", "unpack", "weights", "criu restore",
                                             "gpu restore", "gpu unlock", "handoff wait", "after_restore", "verify",
                                             "gpu check (beside)", "weights handoff (beside)"}));
  // In line: after the unlock (20+30+50+5+100+150+5 = 360 ms), 40 ms.
  EXPECT_NEAR(at["handoff wait"].first, 0.360, 1e-4);
  EXPECT_NEAR(at["handoff wait"].second, 0.400, 1e-4);
  EXPECT_NEAR(at["after_restore"].first, 0.400, 1e-4);
  // Beside: from the end of the check (50 ms) for 370 ms, so it ends where
  // the wait for it does.
  EXPECT_NEAR(at["weights handoff (beside)"].first, 0.050, 1e-9);
  EXPECT_NEAR(at["weights handoff (beside)"].second, 0.420, 1e-9);

  // Drawn on a track of its own (it overlaps unpack, CRIU and the GPU steps),
  // its colour distinct from the weights' and the wait's.
  TimelineOptions o;
  o.zoom_short_lanes = false;
  const std::string svg = RenderTimelineSvg({l}, o);
  const std::vector<Bar> bars = Bars(svg);
  const Bar* criu = Find(bars, "criu restore");
  const Bar* beside = Find(bars, "weights handoff (beside)");
  const Bar* wait = Find(bars, "handoff wait");
  ASSERT_TRUE(criu && beside && wait);
  EXPECT_GT(beside->y, criu->y);
  EXPECT_EQ(wait->y, criu->y);
  EXPECT_NEAR(beside->w / wait->w, 370.0 / 40, 0.05 * 370 / 40);
  EXPECT_NE(PhaseColour("weights handoff (beside)"), PhaseColour("weights"));
  EXPECT_NE(PhaseColour("handoff wait"), PhaseColour("weights handoff (beside)"));
  EXPECT_NE(PhaseColour("handoff wait"), PhaseColour("gpu unlock"));
  EXPECT_NE(svg.find(">weights handoff (beside)<"), std::string::npos) << "in the legend";

  // Without a handoff (no weights_handoff key), neither appears.
  std::map<std::string, double> plain = tm;
  plain.erase("weights_handoff");
  plain.erase("weights_handoff_wait");
  for (const Phase& p : RestoreLane("restore", plain).phases) {
    EXPECT_EQ(p.name.find("handoff"), std::string::npos) << p.name;
  }
}

TEST(Timeline, WriteTimelineFileReplacesAtomically) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = dir.path() + "/t.svg";
  ASSERT_TRUE(WriteTimelineFile(path, "one").ok());
  ASSERT_TRUE(WriteTimelineFile(path, "two").ok());
  std::ifstream in(path);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "two");
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);  // no temporary left
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  const Status s = WriteTimelineFile(dir.path() + "/no/such/dir/t.svg", "x");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no/such/dir"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace hotboot::cli
