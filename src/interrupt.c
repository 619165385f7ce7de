/* SPDX-License-Identifier: MIT */
/*
 * interrupt.c - SIGINT and SIGTERM as a Lua error.
 *
 * luamp_catch_interrupts() (the luamp binary calls it) turns SIGINT and
 * SIGTERM into a Lua error of kind "interrupted" in the main script:
 * raised at once by the luamp call that was waiting (its poll() or futex
 * wait returns with EINTR, and it calls luamp_raise_interrupt), or by a
 * hook at the script's next instruction when it was computing, as lua.c
 * does for Ctrl-C.  The handler does nothing but record the signal and
 * set that hook, both async-signal-safe.  core.interrupted() tells
 * whether one ever arrived, so that the end of the script stops every
 * child at once instead of waiting for it.  The same call starts the
 * SIGCHLD reaper (process.c): both are the binary's, not a library's, to
 * install.
 *
 * Forked children go back to the default actions, and pool workers
 * ignore SIGINT: the terminal's Ctrl-C is the main script's business;
 * workers stop when it tells them or when it dies.
 */
#include "interrupt.h"
#include "luamp.h"
#include "module.h"
#include "process.h"
#include "sys.h"

#include <signal.h>
#include <string.h>

#include <lauxlib.h>

static volatile sig_atomic_t pending_signal;   /* not yet raised */
static volatile sig_atomic_t seen_signal;      /* ever received */
static lua_State *main_state;
static int interrupts_caught;

int luamp_interrupt_pending(void)
{
    return pending_signal;
}

int luamp_interrupt_seen(void)
{
    return seen_signal;
}

void luamp_raise_interrupt(lua_State *L)
{
    int sig = pending_signal;
    if (!sig)
        return;
    pending_signal = 0;
    lua_sethook(L, NULL, 0, 0);
    luamp_raise(L, "interrupted", "interrupted by %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luamp_raise_interrupt(L);
}

/* Async-signal-safe: lua_sethook is meant for this (lua.c does the same). */
static void on_interrupt(int sig)
{
    pending_signal = sig;
    seen_signal = sig;
    if (main_state)
        lua_sethook(main_state, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

void luamp_catch_interrupts(lua_State *L)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    main_state = L;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    interrupts_caught = 1;
    luamp_reaper_start();
}

void luamp_interrupts_forked(int worker)
{
    main_state = NULL;
    pending_signal = 0;
    seen_signal = 0;
    if (interrupts_caught) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
    if (worker)
        signal(SIGINT, SIG_IGN);
}

static int l_interrupted(lua_State *L)
{
    lua_pushboolean(L, seen_signal != 0);
    return 1;
}

/* core.ignore_sigint(): a spawned pool worker, as a forked one */
static int l_ignore_sigint(lua_State *L)
{
    (void)L;
    signal(SIGINT, SIG_IGN);
    return 0;
}

void luamp_open_interrupt(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"interrupted", l_interrupted},
        {"ignore_sigint", l_ignore_sigint},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
