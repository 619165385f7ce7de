/* SPDX-License-Identifier: MIT */
/* cluster.c - STUB while the real one is written (see cluster.h). */
#include "cluster.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int luamp_cluster_start(int *argc, char ***argv)
{
    int provided, rank;

    if (getenv("LUAMP_SPAWN_FD") != NULL
        || (getenv("OMPI_COMM_WORLD_SIZE") == NULL && getenv("PMIX_RANK") == NULL && getenv("PMI_RANK") == NULL))
        return -1;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return -2;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

int luamp_cluster_install(lua_State *L, int processes)
{
    (void)L;
    (void)processes;
    return 0;
}

int luamp_cluster_active(void)
{
    return 0;
}

int luamp_cluster_node(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    MPI_Finalize();
    return 0;
}

int luamp_cluster_stop(int status)
{
    MPI_Finalize();
    return status;
}
