#include "isolated_probe.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace llm {

int probe_time_limit_ms() {
  if (const char* env = std::getenv("LLM_PROBE_TIMEOUT_MS"); env && *env) {
    const int v = std::atoi(env);
    if (v > 0) return v;
  }
  return 5000;
}

std::string isolated_probe_failure(const llm_backend_iface& iface, const llm_device_info& device,
                                   const llm_attention_shape& shape, int limit_ms) {
  int fds[2];
  if (::pipe(fds) != 0) return "";  // cannot isolate: the in-process probe still runs (and is the verdict)
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return "";
  }
  if (pid == 0) {  // the child: probe, say it returned, leave without running the parent's exit handlers
    ::close(fds[0]);
    llm_probe_result result{};
    result.struct_size = sizeof(result);
    iface.probe(&device, &shape, &result);
    const char done = 1;
    ssize_t ignored = ::write(fds[1], &done, 1);
    (void)ignored;
    ::_exit(0);
  }
  ::close(fds[1]);
  pollfd p{fds[0], POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms);
  int ready = 0;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    ready = ::poll(&p, 1, static_cast<int>(std::max<long long>(0, left.count())));
    if (ready >= 0 || errno != EINTR) break;
  }
  char done = 0;
  const bool returned = ready > 0 && ::read(fds[0], &done, 1) == 1 && done == 1;
  ::close(fds[0]);
  if (!returned && ready == 0) ::kill(pid, SIGKILL);  // still running at the deadline
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (returned) return "";
  if (ready == 0)
    return "probe did not return within " + std::to_string(limit_ms) +
           " ms in an isolated child process (killed; LLM_PROBE_TIMEOUT_MS sets the limit)";
  if (WIFSIGNALED(status))
    return "probe crashed (signal " + std::to_string(WTERMSIG(status)) + ", " + ::strsignal(WTERMSIG(status)) +
           ") in an isolated child process";
  return "probe ended its process (exit status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
         ") in an isolated child process";
}

}  // namespace llm
