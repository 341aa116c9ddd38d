# EnvoismsPeers — real peers for the worker suites (test/tap/1*_*.pl): an
# HTTP carrier, a WhatsApp Cloud carrier and a webhook receiver, all Node
# programs from test/peers listening on 127.0.0.1, plus small helpers.
#
#   my $carrier = EnvoismsPeers::start('carrier_peer.js', '--fail-first', 2);
#   ... $carrier->{port}, EnvoismsPeers::log_lines($carrier) (decoded JSON lines)
#   EnvoismsPeers::stop($carrier);
#   EnvoismsPeers::wait_until(sub { ... }, 30) or fail(...);
#   EnvoismsPeers::worker_pid($node, 'envoisms dispatcher 0');
package EnvoismsPeers;

use strict;
use warnings;

use Carp;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(usleep time);

use EnvoismsTest;
use PostgreSQL::Test::Utils;

our $started = 0;
our %running;    # pid => 1 for peers still running, stopped at exit whatever happens

END
{
	local $?;    # keep the test's exit status
	for my $pid (keys %running)
	{
		kill 'TERM', $pid;
		waitpid($pid, 0);
	}
}

# Start test/peers/$script with @args (a --port 0 and a --log file are
# added); waits for its "listening <port>" line.
# Returns { pid, port, log, url }.
sub start
{
	my ($script, @args) = @_;
	$started++;
	my $base = "$PostgreSQL::Test::Utils::tmp_check/peer_${started}_$script";
	my $log = "$base.jsonl";
	my $out = "$base.out";
	unlink $log, $out;
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', $out) or die "open $out: $!";
		open(STDERR, '>&', \*STDOUT) or die "dup: $!";
		exec('node', "$EnvoismsTest::ROOT/test/peers/$script", '--port', 0, '--log', $log, @args)
		  or die "exec node: $!";
	}
	my $deadline = time() + 20;
	while (time() < $deadline)
	{
		my $text = -e $out ? slurp_file($out) : '';
		if ($text =~ /listening (\d+)/)
		{
			$running{$pid} = 1;
			return { pid => $pid, port => $1, log => $log, url => "http://127.0.0.1:$1" };
		}
		croak "$script exited early: $text" if waitpid($pid, WNOHANG) == $pid;
		usleep(50_000);
	}
	kill 'KILL', $pid;
	croak "$script did not start";
}

sub stop
{
	my ($peer) = @_;
	return unless $peer && $peer->{pid};
	kill 'TERM', $peer->{pid};
	waitpid($peer->{pid}, 0);
	delete $running{ $peer->{pid} };
	$peer->{pid} = undef;
}

# The peer's request log, one decoded JSON object per request.
sub log_lines
{
	my ($peer) = @_;
	return () unless -e $peer->{log};
	my @lines;
	open(my $fh, '<', $peer->{log}) or croak "open $peer->{log}: $!";
	while (my $l = <$fh>)
	{
		chomp $l;
		next unless length $l;
		my $v = eval { JSON::PP->new->utf8->decode($l) };
		push @lines, $v if $v;
	}
	close $fh;
	return @lines;
}

# Poll $check every 50 ms until it returns true or $timeout seconds pass.
sub wait_until
{
	my ($check, $timeout) = @_;
	my $deadline = time() + ($timeout // 30);
	while (time() < $deadline)
	{
		return 1 if $check->();
		usleep(50_000);
	}
	return $check->();
}

# The pid of a worker by its application name (undef when not running).
sub worker_pid
{
	my ($node, $name) = @_;
	my $pid = $node->safe_psql('envoisms',
		"SELECT pid FROM pg_stat_activity WHERE application_name = '$name'");
	return $pid eq '' ? undef : $pid;
}

# A single value from envoisms.
sub one
{
	my ($node, $sql) = @_;
	return $node->safe_psql('envoisms', $sql);
}

# Common settings for worker suites: fast restarts, webhooks may reach the
# loopback receivers, http webhook URLs allowed.
sub worker_conf
{
	return (
		"envoisms.worker_restart_delay = 1",
		"envoisms.webhook_allow_private = on",
		"envoisms.webhook_allow_http = on",
		"envoisms.sandbox_delivery_delay = 200ms",
		"envoisms.dispatch_retry_base = 200ms",
		"envoisms.dispatch_retry_max = 2s",
		@_);
}

# POST a JSON body to one of stripe_peer.js's /_test endpoints (mode, event,
# replay); returns its decoded JSON answer.
sub stripe_peer_call
{
	my ($peer, $path, $body) = @_;
	my ($status, undef, $text) = EnvoismsTest::http('POST', "$peer->{url}$path",
		{ 'Content-Type' => 'application/json' }, JSON::PP->new->utf8->canonical->encode($body // {}));
	croak "stripe peer $path: HTTP $status: $text" unless $status == 200;
	return JSON::PP->new->utf8->decode($text);
}

1;
