#include "timeline.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "hotboot/io.h"
#include "hotboot/temp_files.h"

namespace hotboot::cli {
namespace {

// Layout, in pixels. Text widths are estimated (no font metrics in a string
// builder): 0.6 em per character is what DejaVu Sans / Helvetica average on
// lower-case labels, so a label judged to fit does fit.
constexpr double kLabelCol = 200;   // lane labels, left of the plot
constexpr double kRightPad = 90;    // room for the total after the longest bar
constexpr double kTrackH = 24;      // one bar
constexpr double kTrackGap = 3;     // between overlapping-phase tracks of one lane
constexpr double kCalloutH = 15;    // one row of labels that did not fit in their bar
constexpr double kLanePad = 14;     // above and below each lane
constexpr double kBarFont = 11;
constexpr double kCharW = 0.6;

double TextWidth(const std::string& s, double font) {
  // UTF-8: count code points, not bytes (the arrow in "start→listen").
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return static_cast<double>(n) * font * kCharW;
}

std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string Num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

std::string Seconds(double s) {
  char b[32];
  if (s < 0) s = 0;
  if (s < 0.001) std::snprintf(b, sizeof b, "%.2f ms", s * 1000);
  else if (s < 0.01) std::snprintf(b, sizeof b, "%.1f ms", s * 1000);
  else if (s < 1) std::snprintf(b, sizeof b, "%.0f ms", s * 1000);
  else if (s < 10) std::snprintf(b, sizeof b, "%.2f s", s);
  else std::snprintf(b, sizeof b, "%.1f s", s);
  return b;
}

std::string TickLabel(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", v);
  std::string t = b;
  while (t.back() == '0') t.pop_back();
  if (t.back() == '.') t.pop_back();
  return t + " s";
}

// A 1-2-5 step giving at most ~10 ticks over [0, span].
double TickStep(double span) {
  if (!(span > 0)) return 1;
  double raw = span / 10;
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

double LaneTotal(const Lane& l) {
  if (l.total_s >= 0) return l.total_s;
  double t = 0;
  for (const Phase& p : l.phases) t = std::max(t, std::max(p.start_s, p.end_s));
  return t;
}

// Greedy interval partitioning: each phase goes to the first track whose last
// phase ended at or before it starts, so overlapping phases stack.
std::vector<int> AssignTracks(const std::vector<Phase>& phases, int* tracks) {
  std::vector<size_t> order(phases.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return phases[a].start_s < phases[b].start_s; });
  std::vector<double> track_end;
  std::vector<int> track(phases.size(), 0);
  constexpr double kSlack = 1e-6;  // back-to-back phases measured by two clocks
  for (size_t i : order) {
    const Phase& p = phases[i];
    double end = std::max(p.start_s, p.end_s);
    size_t t = 0;
    while (t < track_end.size() && track_end[t] > p.start_s + kSlack) ++t;
    if (t == track_end.size()) track_end.push_back(end);
    else track_end[t] = end;
    track[i] = static_cast<int>(t);
  }
  *tracks = std::max<int>(1, static_cast<int>(track_end.size()));
  return track;
}

struct Callout {
  double anchor_x;  // middle of the bar it belongs to
  double bar_bottom;
  double x, w;      // text extent
  int row;
  std::string text;
};

// Places labels that do not fit in their bars in rows under the lane. Each
// starts at its bar (a vertical leader line joins them); taken from right to
// left, each goes in the topmost row where its text overlaps no other label
// and no leader line crosses a label's text -- a staircase without crossings.
int PlaceCallouts(std::vector<Callout>* callouts, double x0, double xmax) {
  constexpr double kGap = 8, kCluster = 14;
  std::stable_sort(callouts->begin(), callouts->end(),
                   [](const Callout& a, const Callout& b) { return a.anchor_x < b.anchor_x; });
  // Slivers side by side (a few ms each at the start of a long lane) share
  // one label, in bar order, and one leader line.
  std::vector<Callout> merged;
  for (const Callout& c : *callouts) {
    if (!merged.empty() && c.anchor_x - merged.back().anchor_x < kCluster && c.bar_bottom == merged.back().bar_bottom) {
      Callout& m = merged.back();
      m.text += ", " + c.text;
      m.w = TextWidth(m.text, kBarFont);
      continue;
    }
    merged.push_back(c);
  }
  *callouts = std::move(merged);
  int rows = 0;
  for (size_t i = callouts->size(); i-- > 0;) {
    Callout& c = (*callouts)[i];
    c.x = std::max(x0, std::min(c.anchor_x - 3, xmax - c.w));
    for (int r = 0;; ++r) {
      bool ok = true;
      for (size_t j = i + 1; j < callouts->size() && ok; ++j) {
        const Callout& o = (*callouts)[j];
        if (o.row == r && c.x < o.x + o.w + kGap && o.x < c.x + c.w + kGap) ok = false;         // same row, overlapping
        if (o.row > r && o.anchor_x >= c.x - kGap && o.anchor_x <= c.x + c.w + kGap) ok = false;  // its leader, our text
        if (o.row < r && c.anchor_x >= o.x - 2 && c.anchor_x <= o.x + o.w + 2) ok = false;          // our leader, its text
      }
      if (ok) {
        c.row = r;
        break;
      }
    }
    rows = std::max(rows, c.row + 1);
  }
  return rows;
}

// Dark text on light fills, white on dark ones.
bool IsDark(const std::string& hex) {
  auto v = [&](int i) { return std::stoi(hex.substr(static_cast<size_t>(i), 2), nullptr, 16); };
  double lum = 0.299 * v(1) + 0.587 * v(3) + 0.114 * v(5);
  return lum < 150;
}

}  // namespace

std::string PhaseColour(const std::string& name) {
  // The phases hotboot itself draws get fixed colours chosen to differ from
  // their neighbours; anything else hashes into the same palette.
  static const std::map<std::string, std::string> kKnown = {
      // Starting a process: the same grey in every lane.
      {"process start", "#a0a0a0"}, {"startup", "#a0a0a0"},
      // Cold boot: blues for the weights, purple for kernels, reds for warmup.
      {"cuda init", "#8c564b"}, {"weight read", "#1f77b4"}, {"convert", "#6baed6"},
      {"weight upload", "#c49c94"}, {"autotune", "#9467bd"}, {"first inference", "#ff9896"},
      {"warmup", "#d62728"},
      // Restore: warm colours for unpacking, green for CRIU and the hooks.
      {"open + check", "#bcbd22"}, {"unpack", "#ff7f0e"}, {"weights", "#17becf"},
      {"weights (beside unpack)", "#9edae5"}, {"criu restore", "#2ca02c"}, {"gpu check", "#dbdb8d"},
      {"gpu check (beside)", "#dbdb8d"}, {"gpu restore", "#8c564b"}, {"gpu unlock", "#c49c94"},
      {"handoff wait", "#5254a3"}, {"weights handoff (beside)", "#9c9ede"},
      {"after_restore", "#98df8a"}, {"verify", "#e377c2"},
      {"other", "#d9d9d9"}, {"load (other)", "#d9d9d9"},
  };
  static const char* const kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                         "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  auto it = kKnown.find(name);
  if (it != kKnown.end()) return it->second;
  uint32_t h = 2166136261u;  // FNV-1a: stable across runs and builds
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return kPalette[h % (sizeof kPalette / sizeof kPalette[0])];
}

std::map<std::string, double> BootPhasesFromMetrics(const std::string& text) {
  static const std::string kPrefix = "hotboot_boot_phase_seconds{phase=\"";
  std::map<std::string, double> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.rfind(kPrefix, 0) != 0) continue;
    const size_t close = line.find("\"}", kPrefix.size());
    if (close == std::string::npos || close - kPrefix.size() > 64) continue;
    const char* v = line.c_str() + close + 2;
    char* end = nullptr;
    const double seconds = std::strtod(v, &end);
    if (end == v || !std::isfinite(seconds)) continue;
    out[line.substr(kPrefix.size(), close - kPrefix.size())] = seconds * 1000;
  }
  return out;
}

namespace {

double Get(const std::map<std::string, double>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() || !(it->second > 0) ? 0 : it->second;
}

// Phases shorter than this share of the lane are left out of sequential
// bookkeeping ("other"): they would be slivers with a callout each.
constexpr double kOtherShare = 0.01;

}  // namespace

Lane ColdBootLane(const std::string& label, const std::map<std::string, double>& ph, double observed_ready_ms) {
  Lane lane;
  lane.label = label;
  const double ready = Get(ph, "time_to_ready");  // on the server's clock
  const double off = observed_ready_ms > ready ? observed_ready_ms - ready : 0;
  const double listen = Get(ph, "process_start_to_listen");
  const double warm_end = ready > 0 ? ready : listen + Get(ph, "weight_read") + Get(ph, "weight_convert") +
                                                  Get(ph, "compile_autotune") + Get(ph, "warmup");
  const double warm_start = std::max(listen, warm_end - Get(ph, "warmup"));
  const double tune_start = std::max(listen, warm_start - Get(ph, "compile_autotune"));
  const double total = off + warm_end;
  auto add = [&](const std::string& name, double a_ms, double b_ms) {
    if (b_ms > a_ms) lane.phases.push_back({name, (off + a_ms) / 1000, (off + b_ms) / 1000});
  };
  lane.phases.push_back({"process start", 0, (off + listen) / 1000});
  // Loading: what the model measured, in the order it runs, from listen to
  // the start of the autotune; what is left of that span is "other".
  double t = listen;
  for (const auto& [key, name] : std::vector<std::pair<std::string, std::string>>{
           {"cuda_init", "cuda init"}, {"weight_read", "weight read"}, {"weight_convert", "convert"},
           {"weight_upload", "weight upload"}}) {
    const double d = std::min(Get(ph, key), std::max(0.0, tune_start - t));
    add(name, t, t + d);
    t += d;
  }
  if (tune_start - t > kOtherShare * total) add("load (other)", t, tune_start);
  add("autotune", tune_start, warm_start);
  // first_inference counts from the start of the boot (listen) to the end of
  // the first warmup request.
  const double first_end = std::clamp(listen + Get(ph, "first_inference"), warm_start, warm_end);
  if (Get(ph, "first_inference") > 0) add("first inference", warm_start, first_end);
  add("warmup", Get(ph, "first_inference") > 0 ? first_end : warm_start, warm_end);
  lane.total_s = total / 1000;
  return lane;
}

Lane RestoreLane(const std::string& label, const std::map<std::string, double>& tm) {
  Lane lane;
  lane.label = label;
  double t = 0;
  double unpack_start = -1, check_end = -1;
  for (const auto& [key, name] : std::vector<std::pair<std::string, std::string>>{
           {"startup", "process start"}, {"check", "open + check"}, {"unpack", "unpack"}, {"weights", "weights"},
           {"criu_restore", "criu restore"}, {"gpu_check_wait", "gpu check"}, {"gpu_restore", "gpu restore"},
           {"gpu_unlock", "gpu unlock"}, {"weights_handoff_wait", "handoff wait"}, {"after_restore", "after_restore"},
           {"verify", "verify"}}) {
    if (key == "unpack") unpack_start = t;
    const double d = Get(tm, key);
    // Below 0.05 ms nothing was done (the weights already in place).
    if (d >= 0.05) lane.phases.push_back({name, t / 1000, (t + d) / 1000});
    t += d;
    if (key == "check") check_end = t;
  }
  const double total = std::max(t, Get(tm, "total"));
  if (total - t > kOtherShare * total) lane.phases.push_back({"other", t / 1000, total / 1000});
  // Work that ran beside the steps above.
  if (double d = Get(tm, "weights_overlapped"); d > 0 && unpack_start >= 0) {
    lane.phases.push_back({"weights (beside unpack)", unpack_start / 1000, (unpack_start + d) / 1000});
  }
  if (double d = Get(tm, "gpu_check_overlapped"); d > 0 && check_end >= 0) {
    lane.phases.push_back({"gpu check (beside)", check_end / 1000, (check_end + d) / 1000});
  }
  // The GPU weights handoff's thread starts as the check ends and uploads
  // beside unpack, CRIU and the driver's restore; the restore waited
  // "handoff wait" for what was left of it.
  if (double d = Get(tm, "weights_handoff"); d > 0 && check_end >= 0) {
    lane.phases.push_back({"weights handoff (beside)", check_end / 1000, (check_end + d) / 1000});
  }
  lane.total_s = total / 1000;
  return lane;
}

namespace {

// One set of lanes on one time axis, drawn from y down; returns the y below.
class PanelWriter {
 public:
  PanelWriter(double width, std::vector<std::string>* legend) : width_(width), legend_(legend) {}

  // `bare`: lanes drawn again zoomed in below: bars and totals, no labels.
  double Draw(const std::vector<const Lane*>& lanes, const std::vector<bool>& bare, double axis_max,
              const std::string& heading, double y, std::string* out) {
    const double plot_x0 = kLabelCol, plot_x1 = width_ - kRightPad;
    const double step = TickStep(axis_max);
    axis_max = std::max(step, std::ceil(axis_max / step - 1e-9) * step);
    auto X = [&](double s) { return plot_x0 + std::clamp(s, 0.0, axis_max) / axis_max * (plot_x1 - plot_x0); };
    if (!heading.empty()) {
      y += 8;
      *out += "  <text x=\"18\" y=\"" + Num(y + 12) + "\" font-size=\"13\" font-style=\"italic\" fill=\"#444444\">" +
              Escape(heading) + "</text>\n";
      y += 18;
    }
    const double axis_y = y + 14;  // tick labels above the first lane
    y = axis_y + 8;
    std::string body;
    for (size_t i = 0; i < lanes.size(); ++i) y = DrawLane(*lanes[i], i < bare.size() && bare[i], X, y, &body);
    // Grid lines go over the lane bands (which would hide them), faint.
    std::string axis;
    for (int i = 0;; ++i) {
      const double v = i * step;
      if (v > axis_max + step * 1e-6) break;
      axis += "  <line x1=\"" + Num(X(v)) + "\" y1=\"" + Num(axis_y + 4) + "\" x2=\"" + Num(X(v)) + "\" y2=\"" + Num(y) +
              "\" stroke=\"#000000\" stroke-opacity=\"0.12\" stroke-width=\"1\"/>\n";
      axis += "  <text x=\"" + Num(X(v)) + "\" y=\"" + Num(axis_y) +
              "\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555555\">" + Escape(TickLabel(v)) + "</text>\n";
    }
    *out += "  <g class=\"lanes\">\n" + body + "  </g>\n  <g class=\"axis\">\n" + axis + "  </g>\n";
    return y;
  }

 private:
  template <typename XF>
  double DrawLane(const Lane& lane, bool bare, const XF& X, double y, std::string* out) {
    const double plot_x0 = kLabelCol;
    int tracks = 1;
    const std::vector<int> track = AssignTracks(lane.phases, &tracks);
    const double bars_top = y + kLanePad;
    const double bars_h = tracks * kTrackH + (tracks - 1) * kTrackGap;
    std::vector<Callout> callouts;
    std::string bars, labels;
    for (size_t i = 0; i < lane.phases.size(); ++i) {
      const Phase& p = lane.phases[i];
      if (std::find(legend_->begin(), legend_->end(), p.name) == legend_->end()) legend_->push_back(p.name);
      const double d = std::max(0.0, p.end_s - p.start_s);
      const double x = X(p.start_s);
      const double w = std::max(X(p.start_s + d) - x, 1.0);  // a zero-length phase is still visible
      const double ty = bars_top + track[i] * (kTrackH + kTrackGap);
      const std::string colour = PhaseColour(p.name);
      bars += "  <rect class=\"phase\" x=\"" + Num(x) + "\" y=\"" + Num(ty) + "\" width=\"" + Num(w) + "\" height=\"" +
              Num(kTrackH) + "\" fill=\"" + colour + "\" stroke=\"#ffffff\" stroke-width=\"0.5\"><title>" +
              Escape(lane.label + ": " + p.name + " " + Seconds(d) + " (" + Seconds(p.start_s) + " to " +
                     Seconds(p.start_s + d) + ")") +
              "</title></rect>\n";
      const std::string text = p.name + " " + Seconds(d);
      const std::string fg = IsDark(colour) ? "#ffffff" : "#1a1a1a";
      auto inside = [&](const std::string& t) {
        labels += "  <text x=\"" + Num(x + w / 2) + "\" y=\"" + Num(ty + kTrackH / 2 + 4) +
                  "\" text-anchor=\"middle\" font-size=\"" + Num(kBarFont) + "\" fill=\"" + fg + "\">" + Escape(t) +
                  "</text>\n";
      };
      const double bar_bottom = ty + kTrackH;
      if (bare) {
        // Its phases are labelled in the zoomed-in panel.
      } else if (TextWidth(text, kBarFont) + 8 <= w) {
        inside(text);
      } else if (TextWidth(Seconds(d), kBarFont) + 6 <= w) {
        inside(Seconds(d));  // the duration fits inside; the name goes below
        callouts.push_back({x + w / 2, bar_bottom, 0, TextWidth(p.name, kBarFont), 0, p.name});
      } else {
        callouts.push_back({x + w / 2, bar_bottom, 0, TextWidth(text, kBarFont), 0, text});
      }
    }
    const double total = LaneTotal(lane);
    const std::string total_text = Seconds(total);
    // Callouts may use the room right of the plot, but not the total's.
    const int rows = PlaceCallouts(&callouts, plot_x0, width_ - 12);
    for (const Callout& c : callouts) {
      const double ty = bars_top + bars_h + 4 + (c.row + 1) * kCalloutH - 3;
      const double lx = std::clamp(c.anchor_x, c.x + 2, c.x + c.w - 2);
      labels += "  <line x1=\"" + Num(c.anchor_x) + "\" y1=\"" + Num(c.bar_bottom) + "\" x2=\"" + Num(lx) + "\" y2=\"" +
                Num(ty - kBarFont + 1) + "\" stroke=\"#888888\" stroke-width=\"0.8\"/>\n";
      labels += "  <text x=\"" + Num(c.x) + "\" y=\"" + Num(ty) + "\" font-size=\"" + Num(kBarFont) +
                "\" fill=\"#333333\">" + Escape(c.text) + "</text>\n";
    }
    // The note's lines under the label ('\n' separates them).
    std::vector<std::string> note;
    if (bare) {
      note.push_back("zoomed in below");
    } else {
      for (size_t a = 0; a <= lane.note.size() && !lane.note.empty();) {
        const size_t b = std::min(lane.note.find('\n', a), lane.note.size());
        note.push_back(lane.note.substr(a, b - a));
        a = b + 1;
      }
    }
    const double mid = bars_top + bars_h / 2;
    const double label_y = mid + (note.empty() ? 5 : 0);
    const double lane_h = std::max(kLanePad + bars_h + (rows > 0 ? 4 + rows * kCalloutH : 0) + kLanePad,
                                   label_y + 13.0 * static_cast<double>(note.size()) + kLanePad - y);
    // A faint band behind the lane, the label on the left, the total at the end.
    *out += "  <rect x=\"8\" y=\"" + Num(y + 3) + "\" width=\"" + Num(width_ - 16) + "\" height=\"" + Num(lane_h - 6) +
            "\" rx=\"4\" fill=\"#f4f5f7\"/>\n";
    *out += bars + labels;
    *out += "  <text x=\"18\" y=\"" + Num(label_y) + "\" font-size=\"14\" font-weight=\"bold\" fill=\"#1a1a1a\">" +
            Escape(lane.label) + "</text>\n";
    for (size_t i = 0; i < note.size(); ++i) {
      *out += "  <text x=\"18\" y=\"" + Num(label_y + 15 + 13.0 * static_cast<double>(i)) +
              "\" font-size=\"11\" fill=\"#555555\">" + Escape(note[i]) + "</text>\n";
    }
    *out += "  <text class=\"total\" x=\"" + Num(X(total) + 6) + "\" y=\"" + Num(mid + 5) +
            "\" font-size=\"13\" font-weight=\"bold\" fill=\"#1a1a1a\">" + Escape(total_text) + "</text>\n";
    return y + lane_h;
  }

  double width_;
  std::vector<std::string>* legend_;
};

}  // namespace

std::string RenderTimelineSvg(const std::vector<Lane>& lanes, const TimelineOptions& options) {
  const double width = std::max(480, options.width_px);
  std::vector<std::string> legend;  // phase names in order of first appearance
  PanelWriter panel(width, &legend);

  double longest = 0;
  for (const Lane& l : lanes) longest = std::max(longest, LaneTotal(l));
  const double axis_max = options.axis_max_s > 0 ? options.axis_max_s : (longest > 0 ? longest : 1);
  std::vector<const Lane*> all, short_lanes;
  std::vector<bool> bare;
  double short_longest = 0;
  for (const Lane& l : lanes) {
    all.push_back(&l);
    bare.push_back(false);
    // A lane under a fifth of the axis shows its phases as slivers: it is
    // drawn again below, on an axis of its own.
    if (options.zoom_short_lanes && LaneTotal(l) > 0 && LaneTotal(l) < axis_max / 5) {
      short_lanes.push_back(&l);
      bare.back() = true;
      short_longest = std::max(short_longest, LaneTotal(l));
    }
  }
  std::string body;
  double y = options.subtitle.empty() ? 46 : 64;
  y = panel.Draw(all, bare, axis_max, "", y, &body);
  if (!short_lanes.empty()) {
    std::string names;
    for (const Lane* l : short_lanes) names += (names.empty() ? "" : " · ") + l->label;
    y = panel.Draw(short_lanes, {}, short_longest, "zoomed in, on a time axis of their own: " + names, y + 6, &body);
  }

  // Legend, wrapped into rows.
  std::string leg;
  double lx = 18, ly = y + 22;
  for (const std::string& name : legend) {
    const double w = 14 + 6 + TextWidth(name, 12) + 18;
    if (lx + w > width - 10 && lx > 18) {
      lx = 18;
      ly += 20;
    }
    leg += "  <rect x=\"" + Num(lx) + "\" y=\"" + Num(ly - 11) + "\" width=\"14\" height=\"14\" rx=\"2\" fill=\"" +
           PhaseColour(name) + "\"/>\n";
    leg += "  <text x=\"" + Num(lx + 20) + "\" y=\"" + Num(ly) + "\" font-size=\"12\" fill=\"#333333\">" +
           Escape(name) + "</text>\n";
    lx += w;
  }
  const double height = (legend.empty() ? y : ly) + 16;

  std::string svg;
  svg += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + Num(width) + "\" height=\"" +
         Num(height) + "\" viewBox=\"0 0 " + Num(width) + " " + Num(height) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
  svg += "  <title>" + Escape(options.title) + "</title>\n";
  svg += "  <rect x=\"0\" y=\"0\" width=\"" + Num(width) + "\" height=\"" + Num(height) + "\" fill=\"#ffffff\"/>\n";
  svg += "  <text x=\"18\" y=\"28\" font-size=\"18\" font-weight=\"bold\" fill=\"#1a1a1a\">" + Escape(options.title) +
         "</text>\n";
  if (!options.subtitle.empty()) {
    svg += "  <text x=\"18\" y=\"48\" font-size=\"12\" fill=\"#555555\">" + Escape(options.subtitle) + "</text>\n";
  }
  svg += body;
  svg += "  <g class=\"legend\">\n" + leg + "  </g>\n";
  svg += "</svg>\n";
  return svg;
}

Status WriteTimelineFile(const std::string& path, const std::string& svg) {
  HB_ASSIGN_OR_RETURN(int fd, CreateTemporary(path, 0644));
  const std::string tmp = TempPathFor(path);
  Status s = io::WriteAll(fd, svg.data(), svg.size(), tmp);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError("fsync " + tmp, errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + tmp, errno);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = ErrnoError("rename " + tmp + " to " + path + " (is the directory writable?)", errno);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  SyncParentDir(path);
  return Status::Ok();
}

}  // namespace hotboot::cli
