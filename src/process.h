/* SPDX-License-Identifier: MIT */
/*
 * process.h - child processes (process.c): what other files need of
 * them.
 */
#ifndef LUAMP_PROCESS_H
#define LUAMP_PROCESS_H

#include <sys/types.h>
#include <lua.h>

/* This process's pid (getpid() is a system call; this is not). */
pid_t luamp_pid(void);

/* A pidfd for our child pid (close-on-exec, as every pidfd is): it
 * becomes readable once the child exits.  -1 with errno. */
int luamp_pidfd_open(pid_t pid);

/* The descriptor core.wait() polls for the object at idx: a child
 * handle's pidfd (-2 once the child is reaped: ready at once), or what
 * its metatable's __luamp_fd returns (-1: nothing to wait on); raises for
 * any other object. */
int luamp_waitable_fd(lua_State *L, int idx);

/* Installs the SIGCHLD handler that reaps luamp's children as they exit
 * (luamp_catch_interrupts calls it). */
void luamp_reaper_start(void);

#endif
