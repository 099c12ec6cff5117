/*
 * echoload: a minimal epoll load client for RFC 862 echo servers, the yardstick that
 * `tcpecho bench` is compared with and the load generator the benchmark drives every
 * server under test with (a client written in C costs the least CPU per request, so the
 * server, not the client, is what a run measures).
 *
 *   echoload HOST PORT MODE CONNECTIONS SIZE WARMUP_S DURATION_S [hold]
 *
 * MODE pingpong: each connection sends SIZE bytes, waits for all SIZE bytes to come back,
 *   compares them (memcmp) and sends again.
 * MODE bulk: each connection writes SIZE-byte chunks whenever the socket takes them and
 *   reads whatever comes back, full duplex; echoed bytes are counted.
 * MODE bulk-threads: the same full-duplex load from another client shape, the one most
 *   programs with a blocking socket have: per connection one thread writes SIZE-byte chunks
 *   with blocking writes and another reads with blocking 256 KiB reads, counting echoed
 *   bytes; each thread sleeps and wakes on its own event, not in one epoll pass.
 * MODE connect: CONNECTIONS at a time, each connects, sends SIZE bytes, reads them back,
 *   closes and connects anew; connections completed are counted as "accepted" (the accept rate).
 *
 * bulk-threads runs two threads per connection; the other modes one thread, level-triggered
 * epoll and nonblocking sockets. Every socket has TCP_NODELAY. Prints a JSON line
 * {"event":"measure_start"} when the warm-up ends and {"event":"measure_end"} when the
 * measured window closes (so a harness can read the server's CPU time at exactly those
 * moments), then one JSON result line. With "hold" it waits after measure_end for a line (or
 * EOF) on stdin before closing its connections, so the harness can read the CPU time of
 * processes that live only as long as a connection (socat's forked children). A connection
 * that fails, closes or (ping-pong, connect) sends back other bytes is counted as an error
 * and closed; the exit status is 1 when there was any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { PINGPONG, BULK, BULK_THREADS, CONNECT };

struct conn {
    int fd;
    size_t sent;     /* bytes of the current request written (ping-pong) */
    size_t received; /* bytes of the current echo read (ping-pong) */
    int alive;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void) {
    fprintf(stderr, "usage: echoload HOST PORT pingpong|bulk|bulk-threads|connect CONNECTIONS SIZE WARMUP_S DURATION_S [hold]\n");
    return 2;
}

static uint64_t completed = 0; /* requests (ping-pong), bytes echoed (bulk), connections */
static uint64_t errors = 0;
static int alive_count = 0;

static void fail(int epfd, struct conn *c) {
    if (!c->alive) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->alive = 0;
    errors++;
    alive_count--;
}

/* Connect (blocking: on loopback the kernel completes the handshake before any accept),
 * then go nonblocking and, in ping-pong and connect modes, send the first request. */
static void open_conn(int epfd, const struct addrinfo *ai, enum mode mode, struct conn *c,
                      const char *payload, size_t size) {
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        fprintf(stderr, "echoload: connect: %s\n", strerror(errno));
        close(fd);
        errors++;
        return;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) { close(fd); errors++; return; }
    *c = (struct conn){.fd = fd, .alive = 1};
    alive_count++;
    struct epoll_event ev = {.events = EPOLLIN | (mode == BULK ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (mode != BULK) {
        ssize_t n = write(fd, payload, size);
        if (n < 0) n = 0;
        c->sent = (size_t)n;
        if ((size_t)n < size) {
            ev.events = EPOLLIN | EPOLLOUT;
            epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
        }
    }
}

static void report(const char *mode, int nconn, size_t size, double seconds, const char *unit,
                   uint64_t done, uint64_t errs) {
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"connections\":%d,\"size\":%zu,"
           "\"seconds\":%.6f,\"%s\":%llu,\"per_second\":%.1f,\"errors\":%llu}\n",
           mode, nconn, size, seconds, unit, (unsigned long long)done,
           seconds > 0 ? (double)done / seconds : 0.0, (unsigned long long)errs);
}

/* -- bulk-threads: a writer and a reader thread per connection, blocking sockets -------- */

#define THREAD_READ 262144

static atomic_uint_fast64_t echoed = 0; /* bytes read back, every connection */
static atomic_uint_fast64_t thread_errors = 0;
static atomic_int stopping = 0; /* set at measure_end: failures after it are not errors */

struct side {
    int fd;
    const char *payload;
    size_t size;
};

static void *writer(void *arg) {
    const struct side *s = arg;
    while (!atomic_load_explicit(&stopping, memory_order_relaxed)) {
        ssize_t w = send(s->fd, s->payload, s->size, MSG_NOSIGNAL);
        if (w < 0 && errno != EINTR) {
            if (!atomic_load(&stopping)) atomic_fetch_add(&thread_errors, 1);
            break;
        }
    }
    return NULL;
}

static void *reader(void *arg) {
    const struct side *s = arg;
    char *buf = malloc(THREAD_READ);
    for (;;) {
        ssize_t r = read(s->fd, buf, THREAD_READ);
        if (r > 0) {
            atomic_fetch_add_explicit(&echoed, (uint_fast64_t)r, memory_order_relaxed);
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (!atomic_load(&stopping)) atomic_fetch_add(&thread_errors, 1);
        break;
    }
    free(buf);
    return NULL;
}

static void sleep_until(double t) {
    double left = t - now_s();
    if (left <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)left,
                          .tv_nsec = (long)((left - (double)(time_t)left) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Connect every connection (blocking sockets), start its two threads, mark the window
 * from the main thread; at its end stop the writers, wait for "hold", then cut the
 * connections (shutdown wakes a thread blocked in read or send) and join the threads. */
static int run_threads(const struct addrinfo *ai, int nconn, size_t size, double warmup,
                       double duration, int hold) {
    char *payload = malloc(size);
    for (size_t i = 0; i < size; i++) payload[i] = (char)('a' + i % 26);
    struct side *sides = calloc((size_t)nconn, sizeof *sides);
    pthread_t *threads = calloc(2 * (size_t)nconn, sizeof *threads);
    int started = 0;
    for (int i = 0; i < nconn; i++) {
        int fd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sides[i] = (struct side){.fd = fd, .payload = payload, .size = size};
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            fprintf(stderr, "echoload: connect: %s\n", strerror(errno));
            close(fd);
            sides[i].fd = -1;
            atomic_fetch_add(&thread_errors, 1);
            continue;
        }
        pthread_create(&threads[started++], NULL, reader, &sides[i]);
        pthread_create(&threads[started++], NULL, writer, &sides[i]);
    }
    sleep_until(now_s() + warmup);
    double measure_from = now_s();
    uint64_t at_start = atomic_load(&echoed);
    printf("{\"event\":\"measure_start\"}\n");
    fflush(stdout);
    sleep_until(measure_from + duration);
    uint64_t at_end = atomic_load(&echoed);
    double seconds = now_s() - measure_from;
    atomic_store(&stopping, 1);
    printf("{\"event\":\"measure_end\"}\n");
    fflush(stdout);
    if (hold) {
        int c;
        while ((c = getchar()) != EOF && c != '\n') {
        }
    }
    for (int i = 0; i < nconn; i++)
        if (sides[i].fd >= 0) shutdown(sides[i].fd, SHUT_RDWR);
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
    for (int i = 0; i < nconn; i++)
        if (sides[i].fd >= 0) close(sides[i].fd);
    uint64_t errs = atomic_load(&thread_errors);
    report("bulk-threads", nconn, size, seconds, "bytes", at_end - at_start, errs);
    return errs ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 8 && !(argc == 9 && strcmp(argv[8], "hold") == 0)) return usage();
    int hold = argc == 9;
    const char *host = argv[1], *port = argv[2];
    enum mode mode;
    if (strcmp(argv[3], "pingpong") == 0) mode = PINGPONG;
    else if (strcmp(argv[3], "bulk") == 0) mode = BULK;
    else if (strcmp(argv[3], "connect") == 0) mode = CONNECT;
    else if (strcmp(argv[3], "bulk-threads") == 0) mode = BULK_THREADS;
    else return usage();
    int nconn = atoi(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    double warmup = atof(argv[6]), duration = atof(argv[7]);
    if (nconn < 1 || size < 1 || warmup < 0 || duration <= 0) return usage();

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        fprintf(stderr, "echoload: cannot resolve %s\n", host);
        return 2;
    }
    if (mode == BULK_THREADS) {
        int status = run_threads(ai, nconn, size, warmup, duration, hold);
        freeaddrinfo(ai);
        return status;
    }
    char *payload = malloc(size), *inbuf = malloc(size > 262144 ? size : 262144);
    for (size_t i = 0; i < size; i++) payload[i] = (char)('a' + i % 26);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    int epfd = epoll_create1(0);
    for (int i = 0; i < nconn; i++) open_conn(epfd, ai, mode, &conns[i], payload, size);

    double start = now_s(), measure_from = start + warmup, measure_to = measure_from + duration;
    int measuring = 0;
    uint64_t at_start = 0;
    struct epoll_event events[256];
    while (alive_count > 0) {
        double t = now_s();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            at_start = completed;
            printf("{\"event\":\"measure_start\"}\n");
            fflush(stdout);
        }
        if (t >= measure_to) break;
        int n = epoll_wait(epfd, events, 256, 10);
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            if (!c->alive) continue;
            if (events[e].events & (EPOLLERR | EPOLLHUP)) { fail(epfd, c); continue; }
            if (mode != BULK) {
                if (c->sent < size && (events[e].events & EPOLLOUT)) {
                    ssize_t w = write(c->fd, payload + c->sent, size - c->sent);
                    if (w < 0 && errno != EAGAIN) { fail(epfd, c); continue; }
                    if (w > 0) c->sent += (size_t)w;
                    if (c->sent == size) {
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
                if (events[e].events & EPOLLIN) {
                    ssize_t r = read(c->fd, inbuf, size - c->received);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { fail(epfd, c); continue; }
                    if (r < 0) continue;
                    if (memcmp(inbuf, payload + c->received, (size_t)r) != 0) { fail(epfd, c); continue; }
                    c->received += (size_t)r;
                    if (c->received == size && c->sent == size) {
                        completed++;
                        c->received = 0;
                        if (mode == CONNECT) { /* close and connect anew */
                            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                            close(c->fd);
                            alive_count--;
                            open_conn(epfd, ai, mode, c, payload, size);
                            continue;
                        }
                        ssize_t w = write(c->fd, payload, size);
                        if (w < 0 && errno != EAGAIN) { fail(epfd, c); continue; }
                        c->sent = w < 0 ? 0 : (size_t)w;
                        if (c->sent < size) {
                            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                        }
                    }
                }
            } else {
                if (events[e].events & EPOLLIN) {
                    ssize_t r = read(c->fd, inbuf, 262144);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { fail(epfd, c); continue; }
                    if (r > 0) completed += (uint64_t)r;
                }
                if (events[e].events & EPOLLOUT) {
                    ssize_t w = write(c->fd, payload, size);
                    if (w < 0 && errno != EAGAIN) { fail(epfd, c); continue; }
                }
            }
        }
    }
    double end = now_s();
    freeaddrinfo(ai);
    if (!measuring) { at_start = completed; measure_from = end; }
    printf("{\"event\":\"measure_end\"}\n");
    fflush(stdout);
    if (hold) {
        int c;
        while ((c = getchar()) != EOF && c != '\n') {
        }
    }
    double seconds = end - measure_from;
    uint64_t done = completed - at_start;
    report(mode == PINGPONG ? "pingpong" : mode == BULK ? "bulk" : "connect", nconn, size, seconds,
           mode == PINGPONG ? "requests" : mode == BULK ? "bytes" : "accepted", done, errors);
    return errors ? 1 : 0;
}
