// Helpers for the end-to-end tests: run the CLIs, generate a tiny model once.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hotboot::test {

struct CmdResult {
  int exit_code = -1;  // 128+N when killed by signal N
  std::string out;
  std::string err;
};

std::string Bin(const std::string& name);  // build/bin/<name>
// Runs argv to completion with stdin from /dev/null.
CmdResult RunCmd(const std::vector<std::string>& argv, int timeout_s = 600);
// Starts argv in the background with stdout/stderr to files; returns its pid.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& out_file, const std::string& err_file);

// A scratch directory unique to this test process.
std::string ScratchDir();
// The tiny model, generated once per test process.
const std::string& TinyModel();
// A snapshot of the reference server on the tiny model, built once.
const std::string& TinySnapshot();

// A free TCP port on 127.0.0.1 (distinct across calls in one process).
int FreePort();
// POST /v1/generate; returns the parsed body (null on failure).
nlohmann::json Generate(int port, const std::string& prompt, int max_tokens);
int HttpStatus(int port, const std::string& path);
bool PidAlive(pid_t pid);
// Polls `file` (every 5 ms, up to timeout_s) until it holds `needle`; false
// when the time runs out or the process `pid` (our child) exits first.
bool WaitForText(pid_t pid, const std::string& file, const std::string& needle, int timeout_s);
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

}  // namespace hotboot::test
