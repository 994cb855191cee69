/* spawn: runs one program and reports its wall time, CPU time and peak RSS.
 *
 *   spawn <report file> <program> [args...]
 *
 * The program's peak RSS must not include the runner's: Linux carries ru_maxrss across exec, so a
 * child forked by the (large) Python runner starts at the runner's size. This process is small,
 * and its own fork is what execs the program, so the floor is a few hundred KiB. The allocator to
 * preload comes in BENCH_PRELOAD and becomes LD_PRELOAD in the child only (this process keeps
 * glibc's malloc). Writes "wall_ns=N cpu_ns=N maxrss_kib=N status=S" to the report file, where S
 * is the exit code, or 128 + the signal number; exits 0 unless the program could not be started. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long tv_ns(struct timeval tv)
{
    return tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spawn <report file> <program> [args...]\n");
        return 2;
    }
    const char *preload = getenv("BENCH_PRELOAD");
    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        perror("spawn: fork");
        return 2;
    }
    if (pid == 0) {
        if (preload && *preload)
            setenv("LD_PRELOAD", preload, 1);
        unsetenv("BENCH_PRELOAD");
        execvp(argv[2], argv + 2);
        fprintf(stderr, "spawn: %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("spawn: wait4");
            return 2;
        }
    }
    long long wall = now_ns() - start;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fprintf(f, "wall_ns=%lld cpu_ns=%lld maxrss_kib=%ld status=%d\n", wall,
            tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime), ru.ru_maxrss, code);
    return fclose(f) == 0 ? 0 : 2;
}
