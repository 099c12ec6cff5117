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
 * MODE connect: CONNECTIONS at a time, each connects, sends SIZE bytes, reads them back,
 *   closes and connects anew; connections completed are counted as "accepted" (the accept rate).
 *
 * One thread, level-triggered epoll, nonblocking sockets with TCP_NODELAY. Prints a JSON
 * line {"event":"measure_start"} when the warm-up ends and {"event":"measure_end"} when
 * the measured window closes (so a harness can read the server's CPU time at exactly those
 * moments), then one JSON result line. With "hold" it waits after measure_end for a line (or
 * EOF) on stdin before closing its connections, so the harness can read the CPU time of
 * processes that live only as long as a connection (socat's forked children). A connection that fails, closes or sends back other
 * bytes is counted as an error and closed; the exit status is 1 when there was any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { PINGPONG, BULK, CONNECT };

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
    fprintf(stderr, "usage: echoload HOST PORT pingpong|bulk|connect CONNECTIONS SIZE WARMUP_S DURATION_S [hold]\n");
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

int main(int argc, char **argv) {
    if (argc != 8 && !(argc == 9 && strcmp(argv[8], "hold") == 0)) return usage();
    int hold = argc == 9;
    const char *host = argv[1], *port = argv[2];
    enum mode mode;
    if (strcmp(argv[3], "pingpong") == 0) mode = PINGPONG;
    else if (strcmp(argv[3], "bulk") == 0) mode = BULK;
    else if (strcmp(argv[3], "connect") == 0) mode = CONNECT;
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
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"connections\":%d,\"size\":%zu,"
           "\"seconds\":%.6f,\"%s\":%llu,\"per_second\":%.1f,\"errors\":%llu}\n",
           mode == PINGPONG ? "pingpong" : mode == BULK ? "bulk" : "connect", nconn, size, seconds,
           mode == PINGPONG ? "requests" : mode == BULK ? "bytes" : "accepted", (unsigned long long)done,
           seconds > 0 ? (double)done / seconds : 0.0, (unsigned long long)errors);
    return errors ? 1 : 0;
}
