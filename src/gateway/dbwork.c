/*
 * dbwork.c — the threads that talk to the database.
 *
 * libmicrohttpd's threads only do network I/O. When a request needs the
 * database (the envoisms.api() call, the precheck before a large body, the
 * health check), http.c suspends its connection and queues a DbJob here; one of
 * the --pool worker threads runs it on a pool connection (there are exactly
 * as many workers as connections, so a worker never waits for a connection)
 * and resumes the connection, whose handler then writes the response. A
 * slow database call thus never stalls the other connections of an I/O
 * thread, and the number of requests in the database at once is the pool
 * size, however the kernel spread the connections over the I/O threads.
 *
 * Locking: one mutex and condition variable guard the FIFO queue. A job's
 * memory belongs to its request; the worker publishes the result with a
 * release store of job->done before resuming the connection.
 */
#include <pthread.h>
#include <stdlib.h>

#include "gateway.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static DbJob *head;
static DbJob *tail;
static bool stopping;
static pthread_t *workers;
static int	nworkers;

/* One worker: takes jobs in FIFO order until told to stop and the queue is empty. */
static void *
WorkerMain(void *arg)
{
	for (;;)
	{
		DbJob	   *job;

		pthread_mutex_lock(&lock);
		while (head == NULL && !stopping)
			pthread_cond_wait(&ready, &lock);
		if (head == NULL)
		{
			pthread_mutex_unlock(&lock);
			return NULL;		/* stopping, and nothing left to do */
		}
		job = head;
		head = job->next;
		if (head == NULL)
			tail = NULL;
		pthread_mutex_unlock(&lock);

		switch (job->kind)
		{
			case DB_JOB_HEALTH:
				job->healthy = PoolHealthCheck();
				break;
			case DB_JOB_PRECHECK:
				PoolCallPrecheck(job->method, job->path, job->headers_json,
								 job->client_ip, &job->result, &job->refused);
				break;
			case DB_JOB_API:
				PoolCallApi(job->method, job->path, job->query, job->headers_json,
							job->body, job->client_ip, &job->result);
				break;
		}
		__atomic_store_n(&job->done, true, __ATOMIC_RELEASE);
		MHD_resume_connection(job->connection);
	}
}

/* Starts count workers; false when a thread cannot be created. */
bool
DbWorkStart(int count)
{
	workers = calloc(count, sizeof(pthread_t));
	if (workers == NULL)
		return false;
	for (nworkers = 0; nworkers < count; nworkers++)
		if (pthread_create(&workers[nworkers], NULL, WorkerMain, NULL) != 0)
			return false;
	return true;
}

/* Queues a job for the next free worker. */
void
DbWorkSubmit(DbJob *job)
{
	job->next = NULL;
	job->done = false;
	pthread_mutex_lock(&lock);
	if (tail)
		tail->next = job;
	else
		head = job;
	tail = job;
	pthread_cond_signal(&ready);
	pthread_mutex_unlock(&lock);
}

/* Lets the workers finish the queue, then joins them. */
void
DbWorkStop(void)
{
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_broadcast(&ready);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < nworkers; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	workers = NULL;
	nworkers = 0;
}
