/* leaky: a small "service" that leaks descriptors the way real code does.
 *
 *   cargo xtask demo      # runs: fdtrace run -- target/demo/leaky
 *
 * - read_config() returns early on a short read and forgets its fd;
 * - open_cache() is called per request and never closes what it opens;
 * - start_helper() creates a pipe without O_CLOEXEC, so the helper
 *   process it execs inherits both ends. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static int read_config(const char *path) {
    char header[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    if (read(fd, header, sizeof header) < (ssize_t)sizeof header) {
        return -1; /* bug: fd is never closed on this path */
    }
    close(fd);
    return 0;
}

static int open_cache(int request) {
    (void)request;
    return open("/etc/hostname", O_RDONLY); /* bug: nobody closes it */
}

static void start_helper(void) {
    int p[2];
    if (pipe(p) != 0) return; /* bug: no O_CLOEXEC, and the parent keeps both ends */
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    waitpid(pid, NULL, 0);
}

int main(void) {
    read_config("/etc/hostname");
    for (int request = 0; request < 3; request++) open_cache(request);
    start_helper();
    puts("leaky: done");
    return 0;
}
