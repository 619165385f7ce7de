/* SPDX-License-Identifier: MIT */
/*
 * registry.h - every key luamp keeps in the Lua registry, in one place so
 * that no two collide and C and Lua name each the same way: the Lua layer
 * reads the same strings from core.registry_keys (module.c) rather than
 * spelling them again.  The metatable names are registry keys too
 * (luaL_newmetatable).
 */
#ifndef LUAMP_REGISTRY_H
#define LUAMP_REGISTRY_H

/* Metatables of the C types. */
#define LUAMP_CHILD_MT     "luamp.child"
#define LUAMP_CONN_MT      "luamp.Connection"
#define LUAMP_QUEUE_MT     "luamp.Queue"
#define LUAMP_JQUEUE_MT    "luamp.JoinableQueue"
#define LUAMP_POOLQUEUE_MT "luamp.PoolQueue"

/* id -> object, weak values: the objects this process has (objects.c). */
#define LUAMP_OBJECTS_KEY "luamp.objects"
/* A table the encoder fills with id -> object for every object it
 * encodes, while it is set (spawn.lua, share.lua, pool.c). */
#define LUAMP_COLLECT_KEY "luamp.collect"
/* function(kind, message, errno) raising a luamp Error (errors.lua, for
 * sys.c's luamp_raise). */
#define LUAMP_RAISE_KEY "luamp.raise"
/* A pool worker's function reading the objects its parent sends
 * (share.lua), called by the decoder when it meets an unknown object. */
#define LUAMP_FETCH_KEY "luamp.fetch_objects"
/* luamp-mpi's calls for cluster.lua (cluster.c); absent elsewhere. */
#define LUAMP_CLUSTER_KEY "luamp.cluster"
/* The state's default number of Pool processes (host.c, sys.c). */
#define LUAMP_DEFAULT_PROCESSES_KEY "luamp.default_processes"

#endif
