/*
 * A small test harness for the C tests: named checks, a summary line, and child processes for
 * behaviour that ends the process (fatal errors, corruption aborts).
 *
 * Every test binary ends with the line "N passed, N failed" and exits non-zero if anything failed.
 */
#ifndef ZEND_ALLOC_TEST_H
#define ZEND_ALLOC_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zend_alloc.h"

static int tests_passed = 0;
static int tests_failed = 0;
static const char *current_test = "";

/* Records one check; prints failures with their location. */
#define CHECK(cond) check_impl(!!(cond), #cond, __FILE__, __LINE__)
/* Checks two size_t values for equality, printing both on failure. */
#define CHECK_EQ(a, b) check_eq_impl((size_t)(a), (size_t)(b), #a, #b, __FILE__, __LINE__)
/* Checks that a string contains another. */
#define CHECK_CONTAINS(hay, needle) check_contains_impl((hay), (needle), __FILE__, __LINE__)

static inline void check_impl(int ok, const char *what, const char *file, int line)
{
    if (ok) {
        tests_passed++;
    } else {
        tests_failed++;
        fprintf(stderr, "FAIL [%s] %s:%d: %s\n", current_test, file, line, what);
    }
}

static inline void check_eq_impl(size_t a, size_t b, const char *ea, const char *eb, const char *file, int line)
{
    if (a == b) {
        tests_passed++;
    } else {
        tests_failed++;
        fprintf(stderr, "FAIL [%s] %s:%d: %s == %s (%zu != %zu)\n", current_test, file, line, ea, eb, a, b);
    }
}

static inline void check_contains_impl(const char *hay, const char *needle, const char *file, int line)
{
    if (hay && strstr(hay, needle)) {
        tests_passed++;
    } else {
        tests_failed++;
        fprintf(stderr, "FAIL [%s] %s:%d: output lacks \"%s\"; it was:\n---\n%s---\n", current_test, file, line,
                needle, hay ? hay : "(null)");
    }
}

/* Runs a named group of checks. */
#define RUN(fn) do { current_test = #fn; fn(); } while (0)

/* Prints the summary line CI reads; returns the exit status. */
static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    fflush(stdout);
    return tests_failed ? 1 : 0;
}

/* What a child process did: how it ended and what it wrote to stderr and stdout. */
typedef struct {
    int exited;        /* 1: exit() with `status`; 0: killed by `signal` */
    int status;
    int signal;
    char err[8192];
    char out[8192];
} child_result;

/* Reads a child's stdout and stderr until both close (both at once, so neither pipe can fill up
 * and stall the child), then waits for it. */
static inline void collect_child(pid_t pid, int out_fd, int err_fd, child_result *r)
{
    int fds[2] = {out_fd, err_fd};
    char *bufs[2] = {r->out, r->err};
    size_t lens[2] = {0, 0}, caps[2] = {sizeof r->out, sizeof r->err};
    int open_fds = 2;
    while (open_fds > 0) {
        fd_set set;
        FD_ZERO(&set);
        int maxfd = -1;
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0) {
                FD_SET(fds[i], &set);
                maxfd = fds[i] > maxfd ? fds[i] : maxfd;
            }
        }
        if (select(maxfd + 1, &set, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0 && FD_ISSET(fds[i], &set)) {
                char sink[4096];
                size_t room = caps[i] - 1 - lens[i];
                ssize_t n = room > 0 ? read(fds[i], bufs[i] + lens[i], room) : read(fds[i], sink, sizeof sink);
                if (n <= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                    open_fds--;
                } else if (room > 0) {
                    lens[i] += (size_t)n;
                }
            }
        }
    }
    r->out[lens[0]] = '\0';
    r->err[lens[1]] = '\0';
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st)) {
        r->exited = 1;
        r->status = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
        r->signal = WTERMSIG(st);
    }
}

/* What a child process runs: `fn(arg)` with `env` added to its environment, or (fn NULL) this
 * binary again as `<binary> --probe <mode>` with `envp` as its whole environment. */
typedef struct {
    void (*fn)(void *);
    void *arg;
    const char *const *env;
    const char *mode;
    const char *const *envp;
} child_spec;

/*
 * The path of this test binary, for running it again. Not "/proc/self/exe" itself: under valgrind
 * that link names valgrind's own tool binary, which refuses to run on its own ("You cannot run
 * 'probe' directly"). readlink() of it gives the real path natively, and valgrind answers it with
 * the path of the program it runs (the client), so the child is the test binary in both cases.
 * (Valgrind does not follow the exec unless --trace-children=yes: the child runs natively.)
 */
static inline const char *self_exe_path(void)
{
    static char path[4096];
    if (path[0] == '\0') {
        static const char deleted[] = " (deleted)"; /* the binary was rebuilt while it ran */
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        size_t len = n > 0 ? (size_t)n : 0;
        path[len] = '\0'; /* len < sizeof path: readlink was given one byte less */
        if (len == 0 || len == sizeof path - 1 ||
            (len > sizeof deleted - 1 && strcmp(path + len - (sizeof deleted - 1), deleted) == 0)) {
            snprintf(path, sizeof path, "/proc/self/exe"); /* the running binary itself */
        }
    }
    return path;
}

/* Forks a child for `spec` with stdout and stderr piped back, and collects what it did. */
static inline child_result spawn_child(const child_spec *spec)
{
    child_result r;
    int err_pipe[2], out_pipe[2];
    const char *exe = spec->fn ? NULL : self_exe_path(); /* found in the parent, before the fork */
    memset(&r, 0, sizeof r);
    fflush(stdout);
    fflush(stderr);
    if (pipe(err_pipe) != 0 || pipe(out_pipe) != 0) {
        perror("pipe");
        exit(2);
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        dup2(err_pipe[1], 2);
        dup2(out_pipe[1], 1);
        close(err_pipe[0]);
        close(out_pipe[0]);
        if (spec->fn) {
            for (const char *const *e = spec->env; e && *e; e++) {
                putenv((char *)*e);
            }
            spec->fn(spec->arg);
            fflush(stdout);
            _exit(0);
        }
        char *const argv[] = {(char *)"probe", (char *)"--probe", (char *)spec->mode, NULL};
        execve(exe, argv, (char *const *)spec->envp);
        fprintf(stderr, "execve %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(err_pipe[1]);
    close(out_pipe[1]);
    collect_child(pid, out_pipe[0], err_pipe[0], &r);
    return r;
}

/*
 * Runs fn(arg) in a child process with `env` ("NAME=value" strings, NULL-terminated, may be NULL)
 * added to its environment, and collects its exit and output. The child exits 0 if fn returns.
 */
static inline child_result run_child(void (*fn)(void *), void *arg, const char *const *env)
{
    child_spec spec = {fn, arg, env, NULL, NULL};
    return spawn_child(&spec);
}

extern char **environ;

/*
 * Runs this test binary again (see self_exe_path) as `<binary> --probe <mode>`, in a clean
 * environment: this process's environment without the library's variables, plus `env`
 * ("NAME=value" strings, NULL-terminated, may be NULL). The library reads its variables once per
 * process, so variable handling is tested in fresh processes.
 */
static inline child_result run_self(const char *mode, const char *const *env)
{
    static const char *const library_vars[] = {"ZEND_MM_MEM_TYPE=", "ZEND_MM_SEG_SIZE=", "ZEND_MM_COMPACT=",
                                               "USE_ZEND_ALLOC=", "USE_ZEND_ALLOC_HUGE_PAGES=", "ZEND_MM_DEBUG=",
                                               "ZEND_ALLOC_PRINT_LEAKS=", "ZEND_MM_MAX_ALLOCS=", NULL};
    const char *envp[256];
    size_t n = 0;
    for (char **e = environ; *e && n < 200; e++) {
        int ours = 0;
        for (const char *const *v = library_vars; *v; v++) {
            ours |= strncmp(*e, *v, strlen(*v)) == 0;
        }
        if (!ours) {
            envp[n++] = *e;
        }
    }
    for (; env && *env && n < 255; env++) {
        envp[n++] = *env;
    }
    envp[n] = NULL;
    child_spec spec = {NULL, NULL, NULL, mode, envp};
    return spawn_child(&spec);
}

/* "hg" if the mapping holding `p` is advised for transparent huge pages (VmFlags of
 * /proc/self/smaps), "-" if not, "?" if no mapping holds it. */
static inline const char *huge_page_flag(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int inside = 0;
    const char *flag = "?";
    uintptr_t a = (uintptr_t)p;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = a >= lo && a < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            flag = strstr(line, " hg") ? "hg" : "-";
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return flag;
}

/* Checks that a child ended with exit status `status` and (unless `err` is NULL) wrote exactly
 * `err` to stderr. */
#define CHECK_EXIT(r, status, err) check_exit_impl(&(r), (status), (err), __FILE__, __LINE__)
/* Checks that a child was killed by SIGABRT after printing PHP's "zend_mm_heap corrupted" line and
 * one more line (what was wrong, and where). */
#define CHECK_CORRUPTED(r) check_corrupted_impl(&(r), NULL, __FILE__, __LINE__)
/* The same, the second line being exactly `detail` (without its newline). */
#define CHECK_CORRUPTED_AS(r, detail) check_corrupted_impl(&(r), (detail), __FILE__, __LINE__)
/* Checks that a child was killed by `sig` after printing exactly `err`. */
#define CHECK_SIGNAL(r, sig, err) check_signal_impl(&(r), (sig), (err), __FILE__, __LINE__)

static inline void report_child(const child_result *r, const char *want_err)
{
    fprintf(stderr, "  child: exited=%d status=%d signal=%d\n  stderr:   [%s]\n", r->exited, r->status, r->signal, r->err);
    if (want_err) {
        fprintf(stderr, "  expected: [%s]\n", want_err);
    }
}

static inline void check_exit_impl(const child_result *r, int status, const char *err, const char *file, int line)
{
    int ok = r->exited && r->status == status && (err == NULL || strcmp(r->err, err) == 0);
    check_impl(ok, "child exit status and stderr", file, line);
    if (!ok) {
        report_child(r, err);
    }
}

static inline void check_signal_impl(const child_result *r, int sig, const char *err, const char *file, int line)
{
    int ok = !r->exited && r->signal == sig && strcmp(r->err, err) == 0;
    check_impl(ok, "child signal and stderr", file, line);
    if (!ok) {
        report_child(r, err);
    }
}

static inline void check_corrupted_impl(const child_result *r, const char *detail, const char *file, int line)
{
    static const char first[] = "zend_mm_heap corrupted\n";
    const char *second = r->err + (sizeof first - 1);
    const char *end = strchr(second, '\n');
    int ok = !r->exited && r->signal == SIGABRT && strncmp(r->err, first, sizeof first - 1) == 0 &&
             end != NULL && end > second && end[1] == '\0' &&
             (detail == NULL || (strncmp(second, detail, (size_t)(end - second)) == 0 &&
                                 strlen(detail) == (size_t)(end - second)));
    check_impl(ok, "child aborted with zend_mm_heap corrupted and a second line", file, line);
    if (!ok) {
        report_child(r, detail);
    }
}

/* run_checks_in_child: what the child runs. */
typedef struct {
    void (*fn)(void *);
    void *arg;
} checks_in_child;

static inline void checks_in_child_main(void *arg)
{
    const checks_in_child *c = arg;
    tests_passed = 0; /* the child counts its own checks only */
    tests_failed = 0;
    c->fn(c->arg);
    fflush(stderr);
    _exit(test_summary()); /* prints the child's "N passed, N failed" */
}

/*
 * Runs fn(arg), a group of checks, in a child process, for checks that may end the process (a fatal
 * error, an abort, a crash) without taking this one with them. The child's checks count here: its
 * summary line is read back and added to this process's counts, and its stderr (where failed checks
 * are described) is passed on when anything failed. A child that ends without a summary line, or
 * with a status that disagrees with it, counts as one more failure. `label` names the run.
 */
static inline child_result run_checks_in_child(void (*fn)(void *), void *arg, const char *label)
{
    checks_in_child c = {fn, arg};
    child_result r = run_child(checks_in_child_main, &c, NULL);
    int passed = 0, failed = 0, found = 0;
    for (const char *line = r.out; line && *line;) {
        int p, f, end = 0;
        if (sscanf(line, "%d passed, %d failed\n%n", &p, &f, &end) == 2 && end > 0) {
            passed = p, failed = f, found = 1;
        }
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    tests_passed += passed;
    tests_failed += failed;
    int clean_end = found && r.exited && r.status == (failed ? 1 : 0);
    if (!clean_end) {
        tests_failed++;
        fprintf(stderr, "FAIL [%s] %s: the child ended (%s %d) %s\n", current_test, label,
                r.exited ? "exit status" : "signal", r.exited ? r.status : r.signal,
                found ? "with a status its summary line does not explain" : "before its summary line");
    }
    if (failed || !clean_end) {
        fprintf(stderr, "  %s: child exited=%d status=%d signal=%d, %d passed, %d failed; its stderr:\n%s\n", label,
                r.exited, r.status, r.signal, passed, failed, r.err);
    }
    return r;
}

/*
 * Whether this process runs under valgrind. Checks that cannot hold there skip themselves with it,
 * saying why: the resident set size, for one, includes valgrind's own memory (shadow memory,
 * translations), which can grow while the program's does not, so an RSS bound measures valgrind too.
 * Without valgrind's headers (package valgrind) this is always 0.
 */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define TEST_HAVE_VALGRIND_H 1
#endif
#endif
static inline int under_valgrind(void)
{
#ifdef TEST_HAVE_VALGRIND_H
    return RUNNING_ON_VALGRIND ? 1 : 0;
#else
    return 0;
#endif
}

/* Resident set size of this process in KiB (from /proc/self/statm). */
static inline long rss_kib(void)
{
    long pages_total = 0, pages_resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) {
        return -1;
    }
    if (fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) {
        pages_resident = -1;
    }
    fclose(f);
    return pages_resident * (sysconf(_SC_PAGESIZE) / 1024);
}

#endif /* ZEND_ALLOC_TEST_H */
