#include <mpi.h>

/* MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM and the other handles are macros over Open MPI's globals,
   which Swift cannot import: these functions return them. */
static inline MPI_Comm ember_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm ember_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype ember_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype ember_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype ember_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype ember_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op ember_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op ember_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op ember_mpi_min(void) { return MPI_MIN; }
static inline MPI_Request ember_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *ember_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Errhandler ember_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int ember_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int ember_mpi_success(void) { return MPI_SUCCESS; }
static inline int ember_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline void *ember_mpi_in_place(void) { return MPI_IN_PLACE; }

/* MPI_Init_thread without argc/argv (Open MPI reads its settings from the environment mpirun sets). */
static inline int ember_mpi_init(int required, int *provided) { return MPI_Init_thread(NULL, NULL, required, provided); }
