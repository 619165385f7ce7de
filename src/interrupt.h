/* SPDX-License-Identifier: MIT */
/*
 * interrupt.h - SIGINT and SIGTERM as a Lua error (interrupt.c).  Every
 * wait that returns with EINTR asks here whether to raise.
 */
#ifndef LUAMP_INTERRUPT_H
#define LUAMP_INTERRUPT_H

#include <lua.h>

/* The signal (SIGINT or SIGTERM) that arrived and nobody has raised yet,
 * else 0 (waits check this on EINTR). */
int luamp_interrupt_pending(void);

/* The last SIGINT or SIGTERM this process received, raised or not, else
 * 0. */
int luamp_interrupt_seen(void);

/* Raises the pending interrupt as a Lua error; returns if there is none. */
void luamp_raise_interrupt(lua_State *L);

/* In a new child of core.fork: the parent's interrupt handling is not the
 * child's (default actions again); a worker ignores SIGINT. */
void luamp_interrupts_forked(int worker);

#endif
