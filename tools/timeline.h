// Phase timelines as an SVG picture: several lanes (cold boot, restore, a
// burst of replicas...) on one time axis, each phase a bar labelled with its
// name and duration, so a person sees where the seconds go. Pure string
// building, no external dependencies; the output is well-formed SVG 1.1.
#pragma once

#include <string>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::cli {

// One phase of a lane, in seconds from the lane's own zero (usually the
// moment the command or process started). Phases may overlap or leave gaps;
// a phase with end_s < start_s is drawn with zero width.
struct Phase {
  std::string name;  // also picks the colour: the same name is the same colour in every lane
  double start_s = 0;
  double end_s = 0;
};

struct Lane {
  std::string label;  // left of the lane, e.g. "cold boot" or "restore (fresh host)"
  std::vector<Phase> phases;
  // Drawn at the lane's end as its total; negative: the latest end_s of its phases.
  double total_s = -1;
  std::string note;  // optional small text under the label, e.g. "verified" or "p50"
};

struct TimelineOptions {
  std::string title = "hotboot: where the seconds go";
  std::string subtitle;    // optional second line under the title (host, preset...)
  int width_px = 1000;     // whole picture; the plot area is what the lane labels leave
  double axis_max_s = 0;   // 0: fit the longest lane (rounded up to a tick)
};

// The SVG document (UTF-8). Text is XML-escaped; lanes are drawn in order,
// top to bottom. An empty lane list still yields a valid picture (title only).
std::string RenderTimelineSvg(const std::vector<Lane>& lanes, const TimelineOptions& options);

// Writes `svg` to `path` atomically: an O_EXCL temporary beside it, fsync,
// rename into place (mode 0644).
Status WriteTimelineFile(const std::string& path, const std::string& svg);

// The colour a phase name is drawn in ("#rrggbb"): a fixed palette entry for
// the well-known phases, otherwise one chosen by a hash of the name.
std::string PhaseColour(const std::string& name);

}  // namespace hotboot::cli
