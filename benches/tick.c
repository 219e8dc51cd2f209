/* The benchmark child: as small and fast to exec as a process can be.
 *
 *   tick crash FILE [MS]   append "start <CLOCK_REALTIME ns> <pid>" to FILE; with MS > 0
 *                          sleep MS ms and append "exit <ns> <pid>"; exit 1
 *   tick idle FILE         append the start line, then pause until a signal ends it
 *   tick log FILE MIB      write MIB MiB of 100-byte lines to stdout (65,500-byte writes),
 *                          append "end <ns> <pid>", exit 0
 *
 * Each line is one O_APPEND write, so concurrent children never interleave.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void append(const char *file, const char *what) {
    char line[128];
    int n = snprintf(line, sizeof line, "%s %lld %d\n", what, now_ns(), (int)getpid());
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) != n) { /* nothing to do */ }
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tick crash|idle FILE [MS]\n");
        return 2;
    }
    append(argv[2], "start");
    if (strcmp(argv[1], "crash") == 0) {
        long ms = argc > 3 ? atol(argv[3]) : 0;
        if (ms > 0) {
            struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
            nanosleep(&ts, NULL);
            append(argv[2], "exit");
        }
        return 1;
    }
    if (strcmp(argv[1], "log") == 0) {
        long long total = (argc > 3 ? atoll(argv[3]) : 1) * 1024 * 1024 / 100 * 100;
        static char chunk[65500];
        for (int i = 0; i < 655; i++) {
            memset(chunk + i * 100, 'x', 99);
            chunk[i * 100 + 99] = '\n';
        }
        long long done = 0;
        while (done < total) {
            size_t n = total - done < (long long)sizeof chunk ? (size_t)(total - done) : sizeof chunk;
            ssize_t w = write(1, chunk, n);
            if (w <= 0) return 3;
            done += w;
        }
        append(argv[2], "end");
        return 0;
    }
    for (;;) pause();
}
