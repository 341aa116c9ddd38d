# EnvoismsTest — helpers shared by the TAP suites (test/tap/*.pl).
#
# A suite gets a real cluster with the extension created, a real gateway
# process on a free port, an HTTP client and a demo key:
#
#   my $node = EnvoismsTest::node('main', conf => ["envoisms.foo = 1"]);
#   my $gw   = EnvoismsTest::start_gateway($node, args => ['--threads', 4]);
#   my ($account, $key) = EnvoismsTest::demo_key($node);
#   my ($status, $headers, $body) = EnvoismsTest::http('POST',
#       "$gw->{url}/v1/messages",
#       { Authorization => "Bearer $key", 'Content-Type' => 'application/json' },
#       '{"to":"+212612345678","message":"Bonjour"}');
#   my $json = EnvoismsTest::json($body);
#   EnvoismsTest::stop_gateway($gw);
#
# The API of the functions above is stable; other suites depend on it.
# Response header names are returned lower-case.
package EnvoismsTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(usleep time);

# Cluster->init runs pg_regress --config-auth; the runner sets PG_REGRESS,
# a test started by hand finds it next to the PGXS makefile.
BEGIN
{
	if (!$ENV{PG_REGRESS})
	{
		my $pgxs = `pg_config --pgxs`;
		chomp $pgxs;
		($ENV{PG_REGRESS} = $pgxs) =~ s{/src/makefiles/pgxs\.mk$}{/src/test/regress/pg_regress};
	}
}

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

our $started = 0;
our $ROOT = $ENV{ENVOISMS_ROOT} // abs_path(dirname(__FILE__) . '/../../..');

# Gateways still running when the test process ends (a test that died
# half-way) are stopped, by the process that started them only.
our %running_gateways;    # pid => 1
my $test_pid = $$;
END
{
	if ($$ == $test_pid)
	{
		local $?;
		for my $pid (keys %running_gateways)
		{
			kill 'KILL', $pid;
			waitpid($pid, 0);
		}
	}
}

# A started cluster with envoisms preloaded and created in database
# "envoisms". %opts: conf => [lines] appended to postgresql.conf,
# preload => 'envoisms,...' to replace shared_preload_libraries.
# With ENVOISMS_TEST_CITUS=1 in the environment the node is the
# coordinator of a Citus cluster (citus_cluster() below) with the schema
# distributed: a suite written for one server then runs against a cluster.
sub node
{
	my ($name, %opts) = @_;
	return (citus_cluster($name, %opts))[0] if $ENV{ENVOISMS_TEST_CITUS};
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	my $preload = $opts{preload} // 'envoisms';
	my @conf = (
		"shared_preload_libraries = '$preload'",
		"envoisms.database = 'envoisms'",
		"max_connections = 200",
		@{ $opts{conf} // [] });
	$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE envoisms');
	$node->safe_psql('envoisms', 'CREATE EXTENSION envoisms');
	return $node;
}

# Whether the PostgreSQL in use has Citus (scripts/citus.sh installs it).
sub citus_available
{
	my $libdir = `pg_config --pkglibdir`;
	chomp $libdir;
	return -f "$libdir/citus.so";
}

# A Citus cluster on loopback: a coordinator and $opts{workers} (2)
# workers (citus_node()), the extension created on the coordinator (Citus
# creates it on the workers) and, unless distribute => 0,
# envoisms.distribute() run. Returns ($coordinator, @workers).
# %opts: conf => [lines] for every node, shard_count (4).
sub citus_cluster
{
	my ($name, %opts) = @_;
	my @nodes = map { citus_node($_ == 0 ? $name : "${name}_w$_", %opts) } 0 .. ($opts{workers} // 2);
	my $coordinator = $nodes[0];
	$coordinator->safe_psql('envoisms', sprintf(
		"SELECT citus_set_coordinator_host('%s', %d)", $coordinator->host, $coordinator->port));
	citus_add_worker($coordinator, $_) for @nodes[1 .. $#nodes];
	$coordinator->safe_psql('envoisms', 'CREATE EXTENSION envoisms');
	$coordinator->safe_psql('envoisms', 'SELECT count(*) FROM envoisms.distribute()')
	  unless defined $opts{distribute} && !$opts{distribute};
	return @nodes;
}

# A started node for a Citus cluster: citus and envoisms preloaded (citus
# first), wal_level = logical (the rebalancer moves shards by logical
# replication), database "envoisms" with the citus extension.
# %opts: conf => [lines], shard_count (4).
sub citus_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'citus,envoisms'",
		# how Citus' background jobs (the rebalancer's moves) reach this
		# node: its socket directory, as the cluster's nodes are named
		"citus.local_hostname = '" . $node->host . "'",
		"envoisms.database = 'envoisms'",
		"max_connections = 200",
		"max_worker_processes = 32",
		"max_prepared_transactions = 100",
		"citus.shard_count = " . ($opts{shard_count} // 4),
		@{ $opts{conf} // [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE envoisms');
	$node->safe_psql('envoisms', 'CREATE EXTENSION citus');
	return $node;
}

# Add a started node with Citus (and envoisms preloaded) as a worker.
sub citus_add_worker
{
	my ($coordinator, $worker) = @_;
	$coordinator->safe_psql('envoisms', sprintf(
		"SELECT citus_add_node('%s', %d)", $worker->host, $worker->port));
}

# The libpq conninfo of a node's "envoisms" database.
sub conninfo
{
	my ($node, $db) = @_;
	$db //= 'envoisms';
	return sprintf("host=%s port=%d dbname=%s", $node->host, $node->port, $db);
}

# The gateway binary: $ENV{ENVOISMS_GATEWAY}, else the freshly built one in
# the tree, else the installed one.
sub gateway_binary
{
	return $ENV{ENVOISMS_GATEWAY} if $ENV{ENVOISMS_GATEWAY};
	my $built = "$ROOT/src/gateway/envoisms-gateway";
	return $built if -x $built;
	my $bindir = `pg_config --bindir`;
	chomp $bindir;
	return "$bindir/envoisms-gateway";
}

# Start envoisms-gateway against $node on a free port; waits until GET
# /healthz answers 200 (wait => 'listening' only waits for any answer,
# wait => 0 does not wait). %opts: args => [extra flags], db => conninfo,
# listen_host => '127.0.0.1', env => {NAME => value}.
# Returns { port, pid, log, url, host }.
sub start_gateway
{
	my ($node, %opts) = @_;
	my $host = $opts{listen_host} // '127.0.0.1';
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $db = $opts{db} // conninfo($node);
	$started++;
	my $log = "$PostgreSQL::Test::Utils::log_path/gateway_${port}_$started.log";
	my @cmd = (gateway_binary(), '--listen', "$host:$port", '--db', $db,
		@{ $opts{args} // [] });

	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log) or die "open $log: $!";
		open(STDERR, '>&', \*STDOUT) or die "dup: $!";
		$ENV{$_} = $opts{env}{$_} for keys %{ $opts{env} // {} };
		exec(@cmd) or die "exec $cmd[0]: $!";
	}
	$running_gateways{$pid} = 1;
	my $gw = {
		port => $port,
		pid  => $pid,
		log  => $log,
		host => $host,
		url  => "http://$host:$port",
	};
	my $wait = $opts{wait} // 'healthy';
	return $gw unless $wait;
	my $deadline = time() + ($opts{timeout} // 30);
	while (time() < $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			delete $running_gateways{$pid};
			croak "envoisms-gateway exited with status $? before it was ready; log:\n"
			  . slurp_file($log);
		}
		my ($status) = http('GET', "$gw->{url}/healthz");
		return $gw if $status == 200 || ($wait eq 'listening' && $status != 599);
		usleep(50_000);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	delete $running_gateways{$pid};
	croak "envoisms-gateway did not become ready on port $port; log:\n" . slurp_file($log);
}

# Stop a gateway with SIGTERM (or $signal) and reap it; returns its exit
# status as waitpid's $? (0 = exited 0). Gives up with SIGKILL after 30 s.
sub stop_gateway
{
	my ($gw, $signal) = @_;
	return $gw->{status} if defined $gw->{status};
	delete $running_gateways{ $gw->{pid} };    # reaped below, whatever happens
	kill($signal // 'TERM', $gw->{pid});
	my $deadline = time() + 30;
	while (time() < $deadline)
	{
		if (waitpid($gw->{pid}, WNOHANG) == $gw->{pid})
		{
			$gw->{status} = $?;
			return $?;
		}
		usleep(20_000);
	}
	kill 'KILL', $gw->{pid};
	waitpid($gw->{pid}, 0);
	$gw->{status} = $?;
	return $?;
}

# One HTTP request on a fresh connection. Returns (status, \%headers with
# lower-case names, body). Status 599 means no HTTP answer (connection
# refused or reset; the body then holds the reason).
sub http
{
	my ($method, $url, $headers, $body, %opts) = @_;
	my $ua = HTTP::Tiny->new(
		keep_alive => 0,
		timeout    => $opts{timeout} // 30,
		agent      => 'envoisms-tap');
	my %args = (headers => { %{ $headers // {} } });
	$args{content} = $body if defined $body;
	my $res = $ua->request($method, $url, \%args);
	return ($res->{status}, $res->{headers} // {}, $res->{content} // '');
}

# Decode a JSON text; undef when it is not JSON.
sub json
{
	my ($text) = @_;
	my $v = eval { JSON::PP->new->utf8->allow_nonref->decode($text) };
	return $v;
}

# Send raw bytes on a new TCP connection and read until the server closes
# (or $opts{timeout} seconds pass). Returns (status or undef, raw response).
sub raw_request
{
	my ($gw, $bytes, %opts) = @_;
	my $sock = IO::Socket::INET->new(
		PeerAddr => $gw->{host},
		PeerPort => $gw->{port},
		Proto    => 'tcp',
		Timeout  => 5) or return (undef, "connect: $!");
	local $SIG{PIPE} = 'IGNORE';
	my $off = 0;
	while ($off < length $bytes)
	{
		my $n = syswrite($sock, $bytes, 65536, $off);
		last unless defined $n && $n > 0;
		$off += $n;
	}
	my $resp = '';
	my $deadline = time() + ($opts{timeout} // 10);
	my $rin = '';
	vec($rin, fileno($sock), 1) = 1;
	while (time() < $deadline)
	{
		my $ready = select(my $rout = $rin, undef, undef, 0.2);
		next unless $ready;
		my $n = sysread($sock, my $chunk, 65536);
		last unless $n;
		$resp .= $chunk;
		last if $opts{first} && $resp =~ /\r\n\r\n/;
	}
	close $sock;
	my ($status) = $resp =~ m{^HTTP/1\.[01] (\d{3})};
	return ($status, $resp);
}

# A demo account (1000 MAD by default) and one API key for it; sandbox
# (env_test_) unless live => 1. %opts: balance, plan, channels => [..], name, live,
# permissions => [..], ip_whitelist => [..], rate_limit (undef = unlimited;
# absent = the function's default).
# Returns (account_id, api_key).
sub demo_key
{
	my ($node, %opts) = @_;
	my $balance = $opts{balance} // 1000;
	my $plan = sql_literal($opts{plan} // 'starter');
	my $name = sql_literal($opts{name} // 'TAP key');
	my $channels = $opts{channels} ? ', channels => ' . sql_array($opts{channels}) : '';
	my $account = $node->safe_psql('envoisms',
		"SELECT envoisms.account_create('TAP account', $balance, $plan$channels)");
	my @args = (sql_literal($account), $name,
		'live => ' . ($opts{live} ? 'true' : 'false'));
	push @args, 'permissions => ' . sql_array($opts{permissions})
	  if exists $opts{permissions};
	push @args, 'ip_whitelist => ' . sql_array($opts{ip_whitelist})
	  if exists $opts{ip_whitelist};
	push @args, 'rate_limit => '
	  . (defined $opts{rate_limit} ? int($opts{rate_limit}) : 'NULL')
	  if exists $opts{rate_limit};
	my $key = $node->safe_psql('envoisms',
		'SELECT envoisms.api_key_create(' . join(', ', @args) . ")->>'api_key'");
	return ($account, $key);
}

sub sql_literal
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub sql_array
{
	my ($list) = @_;
	return 'NULL' unless defined $list;
	return 'ARRAY[' . join(', ', map { sql_literal($_) } @$list) . ']::text[]';
}

1;
