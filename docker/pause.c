/* The pod sandbox's process, like Kubernetes' pause (registry.k8s.io/pause): it holds the pod's
 * namespaces, exits cleanly when the runtime stops it and reaps zombies when it is PID 1. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");
    struct sigaction exit_on = {.sa_handler = stop}, reaper = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &exit_on, NULL) < 0 || sigaction(SIGTERM, &exit_on, NULL) < 0
        || sigaction(SIGCHLD, &reaper, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) pause();
}
