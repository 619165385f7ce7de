/* SPDX-License-Identifier: MIT */
/*
 * objects.h - luamp objects by id (objects.c): the ids, the registry the
 * codec finds objects in, and what a new child must tell it.
 */
#ifndef LUAMP_OBJECTS_H
#define LUAMP_OBJECTS_H

#include <stddef.h>
#include <sys/types.h>
#include <lua.h>

/* A process-unique id for a new object: "<kind>:<pid>:<counter>". */
void luamp_new_object_id(char *out, size_t n, const char *kind);

/* Remembers a luamp object under `id` in registry["luamp.objects"] (weak
 * values) so that the codec can send it by reference to a forked child. */
void luamp_register_object(lua_State *L, int idx, const char *id);

/* In a new child of core.fork, before anything else: `parent` forked it,
 * and every object the parent had made so far is the child's too. */
void luamp_objects_forked(pid_t parent);

/* This process was spawned: it knows only the objects it was started
 * with. */
void luamp_objects_spawned(void);

#endif
