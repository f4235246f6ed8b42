#include "timeline.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
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

std::string TickLabel(double v, double step) {
  char b[32];
  int decimals = step >= 1 ? 0 : step >= 0.1 ? 1 : step >= 0.01 ? 2 : 3;
  std::snprintf(b, sizeof b, "%.*f s", decimals, v);
  return b;
}

// A 1-2-5 step giving at most ~10 ticks over [0, span].
double TickStep(double span) {
  if (!(span > 0)) return 1;
  double raw = span / 8;
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
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

// Places labels that do not fit in their bars in rows under the lane; each
// goes in the first row where it overlaps no earlier label.
int PlaceCallouts(std::vector<Callout>* callouts, double plot_x0, double plot_x1) {
  std::sort(callouts->begin(), callouts->end(),
            [](const Callout& a, const Callout& b) { return a.anchor_x < b.anchor_x; });
  std::vector<double> row_end;
  for (Callout& c : *callouts) {
    c.x = std::clamp(c.anchor_x - c.w / 2, plot_x0, std::max(plot_x0, plot_x1 - c.w));
    size_t r = 0;
    while (r < row_end.size() && row_end[r] + 8 > c.x) ++r;
    if (r == row_end.size()) row_end.push_back(0);
    row_end[r] = c.x + c.w;
    c.row = static_cast<int>(r);
  }
  return static_cast<int>(row_end.size());
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
      {"process start", "#9e9e9e"}, {"start→listen", "#9e9e9e"}, {"startup", "#9e9e9e"},
      {"weight read", "#1f77b4"},   {"fetch", "#1f77b4"},        {"open", "#aec7e8"},
      {"convert", "#ff7f0e"},       {"unpack", "#ff7f0e"},       {"cuda init", "#8c564b"},
      {"autotune", "#9467bd"},      {"criu", "#9467bd"},          {"warmup", "#d62728"},
      {"gpu restore", "#8c564b"},   {"after_restore", "#2ca02c"}, {"first inference", "#e377c2"},
      {"verify", "#17becf"},        {"canary", "#e377c2"},        {"ready", "#2ca02c"},
  };
  static const char* const kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                         "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  auto it = kKnown.find(name);
  if (it != kKnown.end()) return it->second;
  uint32_t h = 2166136261u;  // FNV-1a: stable across runs and builds
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return kPalette[h % (sizeof kPalette / sizeof kPalette[0])];
}

std::string RenderTimelineSvg(const std::vector<Lane>& lanes, const TimelineOptions& options) {
  const double width = std::max(400, options.width_px);
  const double plot_x0 = kLabelCol;
  const double plot_x1 = width - kRightPad;
  const double plot_w = plot_x1 - plot_x0;

  double longest = 0;
  for (const Lane& l : lanes) longest = std::max(longest, LaneTotal(l));
  double step = TickStep(options.axis_max_s > 0 ? options.axis_max_s : longest);
  double axis_max = options.axis_max_s > 0 ? options.axis_max_s
                                           : std::max(step, std::ceil(longest / step - 1e-9) * step);
  auto X = [&](double s) { return plot_x0 + std::clamp(s, 0.0, axis_max) / axis_max * plot_w; };

  std::string body;
  double y = options.subtitle.empty() ? 46 : 64;
  const double axis_y = y + 14;  // tick labels above the first lane
  y = axis_y + 8;
  const double lanes_top = y;

  // Legend entries in order of first appearance.
  std::vector<std::string> legend;
  for (const Lane& lane : lanes) {
    int tracks = 1;
    std::vector<int> track = AssignTracks(lane.phases, &tracks);
    const double bars_top = y + kLanePad;
    const double bars_h = tracks * kTrackH + (tracks - 1) * kTrackGap;

    std::vector<Callout> callouts;
    std::string bars, labels;
    for (size_t i = 0; i < lane.phases.size(); ++i) {
      const Phase& p = lane.phases[i];
      if (std::find(legend.begin(), legend.end(), p.name) == legend.end()) legend.push_back(p.name);
      const double d = std::max(0.0, p.end_s - p.start_s);
      const double x = X(p.start_s);
      const double w = std::max(X(p.start_s + d) - x, 1.0);  // a zero-length phase is still visible
      const double ty = bars_top + track[i] * (kTrackH + kTrackGap);
      const std::string colour = PhaseColour(p.name);
      bars += "  <rect x=\"" + Num(x) + "\" y=\"" + Num(ty) + "\" width=\"" + Num(w) + "\" height=\"" +
              Num(kTrackH) + "\" fill=\"" + colour + "\" stroke=\"#ffffff\" stroke-width=\"1\">" +
              "<title>" + Escape(p.name + ": " + Seconds(d) + " (" + Seconds(p.start_s) + " → " +
                                 Seconds(p.start_s + d) + ")") +
              "</title></rect>\n";
      const std::string text = p.name + " " + Seconds(d);
      const std::string fg = IsDark(colour) ? "#ffffff" : "#1a1a1a";
      if (TextWidth(text, kBarFont) + 8 <= w) {
        labels += "  <text x=\"" + Num(x + w / 2) + "\" y=\"" + Num(ty + kTrackH / 2 + 4) +
                  "\" text-anchor=\"middle\" font-size=\"" + Num(kBarFont) + "\" fill=\"" + fg + "\">" +
                  Escape(text) + "</text>\n";
      } else if (TextWidth(Seconds(d), kBarFont) + 6 <= w) {
        // The duration fits inside; the name goes below.
        labels += "  <text x=\"" + Num(x + w / 2) + "\" y=\"" + Num(ty + kTrackH / 2 + 4) +
                  "\" text-anchor=\"middle\" font-size=\"" + Num(kBarFont) + "\" fill=\"" + fg + "\">" +
                  Escape(Seconds(d)) + "</text>\n";
        callouts.push_back({x + w / 2, bars_top + bars_h, 0, TextWidth(p.name, kBarFont), 0, p.name});
      } else {
        callouts.push_back({x + w / 2, bars_top + bars_h, 0, TextWidth(text, kBarFont), 0, text});
      }
    }
    const int rows = PlaceCallouts(&callouts, plot_x0, plot_x1);
    for (const Callout& c : callouts) {
      const double ty = bars_top + bars_h + 4 + (c.row + 1) * kCalloutH - 3;
      labels += "  <line x1=\"" + Num(c.anchor_x) + "\" y1=\"" + Num(c.bar_bottom) + "\" x2=\"" +
                Num(std::clamp(c.anchor_x, c.x, c.x + c.w)) + "\" y2=\"" + Num(ty - kBarFont + 1) +
                "\" stroke=\"#888888\" stroke-width=\"0.8\"/>\n";
      labels += "  <text x=\"" + Num(c.x) + "\" y=\"" + Num(ty) + "\" font-size=\"" + Num(kBarFont) +
                "\" fill=\"#333333\">" + Escape(c.text) + "</text>\n";
    }
    const double lane_h = kLanePad + bars_h + (rows > 0 ? 4 + rows * kCalloutH : 0) + kLanePad;

    // Label on the left, total on the right, a faint band behind the lane.
    body += "  <rect x=\"8\" y=\"" + Num(y + 3) + "\" width=\"" + Num(width - 16) + "\" height=\"" +
            Num(lane_h - 6) + "\" rx=\"4\" fill=\"#f4f5f7\"/>\n";
    body += bars + labels;
    const double mid = bars_top + bars_h / 2;
    body += "  <text x=\"18\" y=\"" + Num(mid + (lane.note.empty() ? 5 : 0)) +
            "\" font-size=\"14\" font-weight=\"bold\" fill=\"#1a1a1a\">" + Escape(lane.label) + "</text>\n";
    if (!lane.note.empty())
      body += "  <text x=\"18\" y=\"" + Num(mid + 15) + "\" font-size=\"11\" fill=\"#555555\">" +
              Escape(lane.note) + "</text>\n";
    const double total = LaneTotal(lane);
    body += "  <text x=\"" + Num(X(total) + 6) + "\" y=\"" + Num(mid + 5) +
            "\" font-size=\"13\" font-weight=\"bold\" fill=\"#1a1a1a\">" + Escape(Seconds(total)) + "</text>\n";
    y += lane_h;
  }
  const double lanes_bottom = y;

  // Axis: grid lines behind the lanes would be hidden by the lane bands, so
  // they are drawn after them, thin and light, and the bars drawn over again
  // would cost a second pass: the grid goes on top with low opacity instead.
  std::string axis;
  for (int i = 0;; ++i) {
    double v = i * step;
    if (v > axis_max + step * 1e-6) break;
    axis += "  <line x1=\"" + Num(X(v)) + "\" y1=\"" + Num(axis_y + 4) + "\" x2=\"" + Num(X(v)) + "\" y2=\"" +
            Num(lanes_bottom) + "\" stroke=\"#000000\" stroke-opacity=\"0.12\" stroke-width=\"1\"/>\n";
    axis += "  <text x=\"" + Num(X(v)) + "\" y=\"" + Num(axis_y) +
            "\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555555\">" + Escape(TickLabel(v, step)) +
            "</text>\n";
  }

  // Legend, wrapped into rows.
  std::string leg;
  double lx = 18, ly = lanes_bottom + 22;
  for (const std::string& name : legend) {
    double w = 14 + 6 + TextWidth(name, 12) + 18;
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
  const double height = (legend.empty() ? lanes_bottom : ly) + 16;
  (void)lanes_top;

  std::string svg;
  svg += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + Num(width) + "\" height=\"" +
         Num(height) + "\" viewBox=\"0 0 " + Num(width) + " " + Num(height) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
  svg += "  <title>" + Escape(options.title) + "</title>\n";
  svg += "  <rect x=\"0\" y=\"0\" width=\"" + Num(width) + "\" height=\"" + Num(height) + "\" fill=\"#ffffff\"/>\n";
  svg += "  <text x=\"18\" y=\"28\" font-size=\"18\" font-weight=\"bold\" fill=\"#1a1a1a\">" +
         Escape(options.title) + "</text>\n";
  if (!options.subtitle.empty())
    svg += "  <text x=\"18\" y=\"48\" font-size=\"12\" fill=\"#555555\">" + Escape(options.subtitle) + "</text>\n";
  svg += "  <g class=\"lanes\">\n" + body + "  </g>\n";
  svg += "  <g class=\"axis\">\n" + axis + "  </g>\n";
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
