/*
 * epollecho: the C floor of the tcpecho benchmark, the least an echo server can do per
 * request: one thread, level-triggered epoll, nonblocking sockets with TCP_NODELAY, and
 * for each readable connection one read into a fixed buffer and one write of what came
 * (what is not taken at once waits in a per-connection buffer, and reading pauses until it
 * is written). No logs, no accounting.
 *
 * With "splice" it is the bulk floor instead: each connection's bytes go socket -> pipe ->
 * the same socket with splice(2), never into the process, through a pipe of Linux's default
 * size, as Go's io.Copy does; on each readable event up to 16 rounds of one splice in (up to
 * 256 KiB) and the pipe spliced out, and what the peer does not take waits in the pipe,
 * with reading paused, until the socket is writable. It is what tcpecho's own splice path
 * does, without Python.
 *
 *   epollecho HOST PORT [splice]
 *
 * Prints "listening HOST:PORT" once it accepts connections; exits on SIGTERM or SIGINT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 262144

#define SPLICE_READ 262144
#define SPLICE_ROUNDS 16

struct conn {
    int fd;
    int pipe_r, pipe_w; /* splice mode: the pipe, and how much it holds */
    size_t in_pipe;
    char *pending; /* bytes read and not yet written */
    size_t pending_len, pending_off;
};

static char buf[BUF_SIZE];

static void drop(int epfd, struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->pipe_r >= 0) { close(c->pipe_r); close(c->pipe_w); }
    free(c->pending);
    free(c);
}

static void watch(int epfd, struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what waits; 1 when all is written, 0 when some still waits, -1 on error. */
static int flush(struct conn *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t w = write(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        c->pending_off += (size_t)w;
    }
    c->pending_len = c->pending_off = 0;
    return 1;
}

static void on_readable(int epfd, struct conn *c) {
    ssize_t r = read(c->fd, buf, sizeof buf);
    if (r == 0 || (r < 0 && errno != EAGAIN)) { drop(epfd, c); return; }
    if (r < 0) return;
    ssize_t w = write(c->fd, buf, (size_t)r);
    if (w < 0 && errno != EAGAIN) { drop(epfd, c); return; }
    if (w < 0) w = 0;
    if (w < r) {
        c->pending = realloc(c->pending, (size_t)(r - w));
        memcpy(c->pending, buf + w, (size_t)(r - w));
        c->pending_len = (size_t)(r - w);
        c->pending_off = 0;
        watch(epfd, c, EPOLLOUT);
    }
}

/* Splice mode: the pipe out to the socket; 1 when empty, 0 when some still waits, -1 on error. */
static int splice_out(struct conn *c) {
    while (c->in_pipe) {
        ssize_t w = splice(c->pipe_r, NULL, c->fd, NULL, c->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        c->in_pipe -= (size_t)w;
    }
    return 1;
}

static void on_readable_splice(int epfd, struct conn *c) {
    for (int round = 0; round < SPLICE_ROUNDS; round++) {
        ssize_t r = splice(c->fd, NULL, c->pipe_w, NULL, SPLICE_READ, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r < 0 && errno == EAGAIN) return;
        if (r <= 0) { drop(epfd, c); return; } /* the peer's FIN: what was spliced is out */
        c->in_pipe = (size_t)r;
        int done = splice_out(c);
        if (done < 0) { drop(epfd, c); return; }
        if (!done) { watch(epfd, c, EPOLLOUT); return; }
    }
}

int main(int argc, char **argv) {
    int splicing = argc == 4 && strcmp(argv[3], "splice") == 0;
    if (argc != 3 && !splicing) { fprintf(stderr, "usage: epollecho HOST PORT [splice]\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) { fprintf(stderr, "epollecho: cannot resolve\n"); return 2; }
    int lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* inherited when accepted */
    if (bind(lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(lfd, 1024) != 0) { perror("epollecho"); return 1; }
    freeaddrinfo(ai);
    int epfd = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening %s:%s\n", argv[1], argv[2]);
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->pipe_r = nc->pipe_w = -1;
                    int pipe_fds[2];
                    if (splicing) {
                        if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) { close(fd); free(nc); continue; }
                        nc->pipe_r = pipe_fds[0];
                        nc->pipe_w = pipe_fds[1];
                    }
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (events[e].events & EPOLLOUT) {
                int done = splicing ? splice_out(c) : flush(c);
                if (done < 0) { drop(epfd, c); continue; }
                if (done) watch(epfd, c, EPOLLIN);
                continue;
            }
            if (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                if (splicing) on_readable_splice(epfd, c);
                else on_readable(epfd, c);
            }
        }
    }
}
