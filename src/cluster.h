/* SPDX-License-Identifier: MIT */
/*
 * cluster.h - luamp-mpi: the same Pool across the ranks of an MPI job.
 *
 * The luamp-mpi program is luamp (src/main.c built with LUAMP_MPI) with
 * these calls around it.  cluster.c says how the ranks work together.
 */
#ifndef LUAMP_CLUSTER_H
#define LUAMP_CLUSTER_H

#include <lua.h>

/* Joins the MPI job the program was launched in (mpirun, srun), if any.
 * Returns -1 when not launched by MPI (or when started by luamp itself as
 * a spawned child): the program then is plain luamp.  Else the rank: 0
 * runs the script, every other rank a node supervisor
 * (luamp_cluster_node).  -2 when MPI could not start (a message was
 * printed). */
int luamp_cluster_start(int *argc, char ***argv);

/* Rank 0: makes the cluster known to the state's luamp (mp.cluster(),
 * Pools that span the ranks); workers per rank from -j (0: default).
 * Returns 0, or -1 with a message printed. */
int luamp_cluster_install(lua_State *L, int processes);

/* Whether this process is rank 0 of a cluster. */
int luamp_cluster_active(void);

/* Any other rank: the node supervisor's whole life; returns the exit
 * status. */
int luamp_cluster_node(int argc, char **argv);

/* Rank 0, at the end: tells every rank to stop, waits for them and
 * leaves MPI.  Returns status, or a failure status. */
int luamp_cluster_stop(int status);

#endif
