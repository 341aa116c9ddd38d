# 210_smpp_carrier.pl — the SMPP 3.4 carrier against a real SMSC simulator
# (test/peers/smsc.pl, Net::SMPP) on 127.0.0.1: bind, GSM / UCS-2 /
# 3-part sends checked byte for byte at the simulator, message_payload,
# receipts in both forms (and before the submit answer), permanent errors
# refunded, throttling (0x58) and queue-full (0x14) slowing the bind without
# failing anything, generic_nack, a lost submit_sm_resp retried without a
# second debit, the simulator killed and restarted mid-run, clean unbind
# when the carrier is disabled.
use strict;
use warnings;

use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(usleep time);

use EnvoismsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('smpp',
	conf => [
		"envoisms.smpp_supervisor_naptime = '200ms'",
		"envoisms.smpp_poll = '100ms'",
		"log_min_messages = info"
	]);
my $root = $EnvoismsTest::ROOT;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $cport = PostgreSQL::Test::Cluster::get_free_port();
my $record = "$PostgreSQL::Test::Utils::tmp_check/smsc_pdus_$port.jsonl";
my $smsc_log = "$PostgreSQL::Test::Utils::log_path/smsc_$port.log";
my $starts = 0;
my $smsc;

sub sql { return $node->safe_psql('envoisms', $_[0]) }

sub start_smsc
{
	my (%o) = @_;
	$starts++;
	my @cmd = ($^X, "$root/test/peers/smsc.pl", '--port', $port, '--control-port', $cport,
		'--record', $record, '--system-id', 'esme', '--password', 'secret',
		'--receipts', $o{receipts} // 'both', '--id-prefix', "s${starts}x");
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $smsc_log);
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or die "exec: $!";
	}
	my $deadline = time + 10;
	while (time < $deadline)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $cport, Timeout => 1);
		if ($s)
		{
			close $s;
			return $pid;
		}
		usleep(50_000);
	}
	die "the SMSC simulator did not start";
}

sub stop_smsc
{
	my ($pid, $sig) = @_;
	kill($sig // 'TERM', $pid);
	waitpid($pid, 0);
}

sub ctl
{
	my ($cmd) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $cport, Timeout => 5)
	  or die "control port: $!";
	print $s "$cmd\n";
	my $answer = <$s>;
	close $s;
	chomp $answer if defined $answer;
	return $answer;
}

# The PDUs the simulator received, optionally only the given command.
sub pdus
{
	my ($cmd) = @_;
	open(my $f, '<', $record) or return ();
	my @p = map { decode_json($_) } <$f>;
	close $f;
	return $cmd ? grep { $_->{cmd} eq $cmd } @p : @p;
}

sub wait_for
{
	my ($sql, $expected, $what) = @_;
	ok($node->poll_query_until('envoisms', $sql, $expected), $what)
	  or diag("last: " . $node->safe_psql('envoisms', $sql));
}

sub send_sms
{
	my ($account, $to, $body, $from) = @_;
	$from = defined $from ? "'$from'" : "'ENVOISMS'";
	$body =~ s/'/''/g;
	return sql("SELECT envoisms.message_send('$account', '$to', '$body', $from)->>'id'");
}

sub status_of
{
	my ($id) = @_;
	return sql("SELECT status FROM envoisms.messages WHERE message_id = '$id'");
}

sub books_ok
{
	my ($account, $what) = @_;
	is(sql("SELECT ok FROM envoisms.balance_check('$account')"), 't', "$what: balance_check holds");
}

$smsc = start_smsc();
my $account = sql("SELECT envoisms.account_create('SMPP account', 100)");

# ---- bind
sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES
    ('sim', 'smpp', 'simulator', jsonb_build_object('host', '127.0.0.1', 'port', } . $port . q{,
     'system_id', 'esme', 'password', 'secret', 'system_type', 'VMA', 'window', 10,
     'enquire_link_interval', 1, 'response_timeout', 2, 'throttle_pause_ms', 300, 'retry_delay', 0,
     'reconnect_min', 1, 'reconnect_max', 2))});
sql("INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('sms', '', 'sim')");
wait_for("SELECT state FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'", 'bound',
	'a new smpp carrier gets a bound transceiver');
my ($bind) = pdus('bind_transceiver');
is_deeply([ @{$bind}{qw(system_id password system_type)} ], [ 'esme', 'secret', 'VMA' ],
	'bind_transceiver carries system_id, password and system_type from the config');

# A wrong password: refused, backing off, the reason visible.
sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, config) VALUES
    ('wrongpw', 'smpp', jsonb_build_object('host', '127.0.0.1', 'port', } . $port . q{,
     'system_id', 'esme', 'password', 'nope', 'reconnect_min', 1))});
wait_for("SELECT last_error LIKE '%ESME_RINVPASWD%' FROM envoisms.smpp_binds() WHERE carrier_id = 'wrongpw'",
	't', 'a refused bind shows ESME_RINVPASWD in smpp_binds().last_error');
sql("UPDATE envoisms.carriers SET enabled = false WHERE carrier_id = 'wrongpw'");
wait_for("SELECT count(*) FROM envoisms.smpp_binds() WHERE carrier_id = 'wrongpw'", '0',
	'disabling a carrier stops its bind');

# ---- GSM 03.38, one septet per octet, with extension characters
my $m1 = send_sms($account, '+212612345678', 'Bonjour {test} €');
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$m1'", 'delivered', 'GSM message delivered');
my @sub = pdus('submit_sm');
my $p = $sub[-1];
is($p->{data_coding}, 0, 'GSM: data_coding 0');
is($p->{sm_hex}, unpack('H*', "Bonjour \x1b(test\x1b) \x1be"),
	'GSM: the SMSC got GSM 03.38 septets, { } and the euro sign as escape pairs');
is_deeply([ @{$p}{qw(source_addr source_addr_ton source_addr_npi)} ], [ 'ENVOISMS', 5, 0 ],
	'alphanumeric sender: TON 5, NPI 0');
is_deeply([ @{$p}{qw(destination_addr dest_addr_ton dest_addr_npi registered_delivery esm_class)} ],
	[ '212612345678', 1, 1, 1, 0 ], 'destination international E.164, receipt requested');
like($p->{validity_period}, qr/^\d{12}000\+$/, 'validity period is the absolute expiry time');
is(sql("SELECT carrier_ref FROM envoisms.messages WHERE message_id = '$m1'"), 's1x1',
	'the SMSC message id is the carrier_ref');

# ---- UCS-2, numeric sender
my $m2 = send_sms($account, '+212612345678', 'مرحبا 😀', '+212600000099');
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$m2'", 'delivered', 'UCS-2 message delivered');
$p = (pdus('submit_sm'))[-1];
is($p->{data_coding}, 8, 'UCS-2: data_coding 8');
is($p->{sm_hex}, '06450631062d0628062700' . '20' . 'd83dde00',
	'UCS-2: big-endian UTF-16, the emoji as a surrogate pair');
is_deeply([ @{$p}{qw(source_addr source_addr_ton source_addr_npi)} ], [ '212600000099', 1, 1 ],
	'numeric sender: TON 1, NPI 1, no plus sign');

# ---- 3 parts with a concatenation UDH
my $long = join('', map { chr(ord('a') + $_ % 26) } 0 .. 399);
my $n_before = scalar(pdus('submit_sm'));
my $m3 = send_sms($account, '+212612345678', $long);
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$m3'", 'delivered',
	'3-part message delivered once every part was');
my @parts = (pdus('submit_sm'))[ $n_before .. $n_before + 2 ];
is(scalar(grep { defined } @parts), 3, '3 submit_sm for a 400-character GSM text');
is(sql("SELECT segments FROM envoisms.messages WHERE message_id = '$m3'"), '3', 'billed as 3 segments');
my ($ref) = $parts[0]{sm_hex} =~ /^050003([0-9a-f]{2})/;
my $joined = '';
for my $i (0 .. 2)
{
	is($parts[$i]{esm_class}, 64, "part " . ($i + 1) . ": esm_class 0x40 (UDHI)");
	like($parts[$i]{sm_hex}, qr/^050003${ref}03${\ sprintf('%02x', $i + 1)}/,
		"part " . ($i + 1) . ": UDH 05 00 03, one reference, 3 parts, number " . ($i + 1));
	$joined .= pack('H*', substr($parts[$i]{sm_hex}, 12));
}
is($joined, $long, 'the parts joined are the text, split 153 + 153 + 94 like sms_split');
is(sql("SELECT string_agg(length(p)::text, ',') FROM envoisms.sms_split(repeat('x', 400)) p"), '153,153,94',
	'sms_split cuts the same way');
is(sql("SELECT count(*) FROM envoisms.smpp_parts WHERE message_id = '$m3' AND status = 'delivered'"), '3',
	'every part has its own receipt');

# ---- receipts: text only, TLV only, and before the submit answer
for my $mode (qw(text tlv early))
{
	ctl("receipts $mode");
	my $id = send_sms($account, '+212612345678', "receipt $mode");
	wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$id'", 'delivered',
		"receipt form '$mode' delivers the message");
}
ctl('receipts both');

# Failed and expired receipts refund; UNKNOWN is failed.
for my $case ([ 'UNDELIV', 'failed' ], [ 'EXPIRED', 'expired' ], [ 'UNKNOWN', 'failed' ], [ 'REJECTD', 'failed' ])
{
	ctl("stat $case->[0]");
	my $id = send_sms($account, '+212612345678', "stat $case->[0]");
	wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$id'", $case->[1],
		"receipt stat $case->[0] makes the message $case->[1]");
	is(sql("SELECT refunded_mad = charged_mad AND charged_mad > 0 FROM envoisms.messages WHERE message_id = '$id'"),
		't', "$case->[0]: refunded");
}
# A stat word nobody knows: answered ESME_ROK (else the SMSC resends it forever), message left sent.
my $resps_before = () = pdus('deliver_sm_resp');
ctl('receipts text');    # (with TLVs the simulator would say message_state UNKNOWN)
ctl('stat BOGUS');
my $bogus = send_sms($account, '+212612345678', 'stat BOGUS');
my $deadline = time + 20;
usleep(100_000) while time < $deadline && scalar(pdus('deliver_sm_resp')) <= $resps_before;
my @resps = pdus('deliver_sm_resp');
is($resps[-1]{status}, 0, 'a receipt with an unknown stat is still answered ESME_ROK');
is(status_of($bogus), 'sent', 'and changes nothing');
ctl('receipts both');
ctl('stat DELIVRD');
books_ok($account, 'after receipts');

# ---- a permanent error: failed at once, refunded
ctl('status 0x0B 1');
my $bad = send_sms($account, '+212612345678', 'invalid destination');
wait_for("SELECT status || ' ' || error_code FROM envoisms.messages WHERE message_id = '$bad'",
	'failed ESME_RINVDSTADR', 'ESME_RINVDSTADR fails the message with that code');
is(sql("SELECT refunded_mad = charged_mad FROM envoisms.messages WHERE message_id = '$bad'"), 't',
	'a rejected message is refunded');

# ---- generic_nack with a system error: retried, delivered
ctl('nack 0x08 1');
my $nacked = send_sms($account, '+212612345678', 'nacked once');
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$nacked'", 'delivered',
	'a submit answered by generic_nack ESME_RSYSERR is retried and delivered');

# ---- throttling: the bind pauses, nothing fails
my $throttled_before = sql("SELECT throttled FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'");
ctl('throttle 4');
my $t0 = time;
my @burst = split /\n/, sql("SELECT envoisms.message_send('$account', '+212612345678', 'burst ' || i)->>'id'"
	  . " FROM generate_series(1, 10) i");
my $list = join(',', map { "'$_'" } @burst);
wait_for("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND status = 'delivered'", '10',
	'throttled burst: all 10 delivered');
my $elapsed = time - $t0;
cmp_ok(sql("SELECT throttled FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'") - $throttled_before, '>=', 4,
	'the bind saw the 4 throttle answers');
cmp_ok($elapsed, '>=', 0.3, 'the bind paused after ESME_RTHROTTLED (300 ms and more)');
is(sql("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND attempts = 1"), '10',
	'throttled segments were retried in the bind, not sent back to the queue');

ctl('status 0x14 2');
my $qfull = send_sms($account, '+212612345678', 'queue full');
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$qfull'", 'delivered',
	'ESME_RMSGQFUL is retried and delivered');

# ---- a lost submit_sm_resp: retried after response_timeout, no second debit
my $ledger_before = sql("SELECT count(*) FROM envoisms.ledger WHERE account_id = '$account'");
ctl('noresp 1');
my $lost = send_sms($account, '+212612345678', 'answer lost');
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$lost'", 'delivered',
	'a submit without answer is retried and delivered');
is(sql("SELECT attempts FROM envoisms.messages WHERE message_id = '$lost'"), '2', 'it took two attempts');
is(sql("SELECT count(*) FROM envoisms.ledger WHERE account_id = '$account'"), $ledger_before,
	'the retry wrote nothing to the ledger (no second debit)');
cmp_ok(sql("SELECT timeouts FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'"), '>=', 1, 'the timeout is counted');
books_ok($account, 'after the timeout');

# ---- enquire_link
cmp_ok(scalar(pdus('enquire_link')), '>=', 2, 'enquire_link is sent every enquire_link_interval');

# ---- the SMSC killed and restarted in the middle of a run
my $balance_before = sql("SELECT envoisms.account_balance('$account')");
# Receipts before the submit_sm_resp in this run: the simulator's abrupt exit
# resets its connection (it dies with submits unread), which can drop what
# it wrote last, so a resp could arrive without the receipt written after it
# and leave that message "sent" for good (a real SMSC keeps receipts across
# a restart; the simulator does not). In this order TCP delivers a receipt
# whenever it delivers the resp that follows it.
ctl('receipts early');
ctl('crash 40');    # the simulator dies on the 40th submit, others still in flight
my @run = split /\n/, sql("SELECT envoisms.message_send('$account', '+212612345678', 'restart run ' || i)->>'id'"
	  . " FROM generate_series(1, 200) i");
waitpid($smsc, 0);
is($? >> 8, 3, 'the SMSC simulator crashed in the middle of the run');
my @run2 = split /\n/, sql("SELECT envoisms.message_send('$account', '+212612345678', 'while down ' || i)->>'id'"
	  . " FROM generate_series(1, 20) i");
sleep 1;
$smsc = start_smsc();
$list = join(',', map { "'$_'" } @run, @run2);
wait_for("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND status = 'delivered'", '220',
	'after the SMSC restart every message of the run is delivered (nothing lost)');
is(sql("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND refunded_mad > 0"), '0',
	'nothing of the run was failed or refunded');
is(sql("SELECT $balance_before - envoisms.account_balance('$account') = sum(charged_mad) AND sum(charged_mad) = 220 * 0.31"
	  . " FROM envoisms.messages WHERE message_id IN ($list)"), 't',
	'the balance went down by exactly the 220 sends (nothing billed twice)');
is(sql("SELECT count(*) FROM envoisms.ledger WHERE account_id = '$account' AND message_id IN ($list)"), '0',
	'no ledger row for any of them (no second debit, no refund)');
books_ok($account, 'after the restart');
cmp_ok(sql("SELECT reconnects FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'"), '>=', 2, 'the bind reconnected');

# ---- message_payload instead of UDH, as a carrier setting
sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, config) VALUES
    ('simpayload', 'smpp', jsonb_build_object('host', '127.0.0.1', 'port', } . $port . q{,
     'system_id', 'esme', 'password', 'secret', 'long_messages', 'payload'))});
sql("INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('sms', '2126999', 'simpayload')");
wait_for("SELECT state FROM envoisms.smpp_binds() WHERE carrier_id = 'simpayload'", 'bound', 'second carrier bound');
$n_before = scalar(pdus('submit_sm'));
my $mp = send_sms($account, '+212699912345', $long);
wait_for("SELECT status FROM envoisms.messages WHERE message_id = '$mp'", 'delivered',
	'a long message sent as message_payload is delivered');
my @all = pdus('submit_sm');
my @mp = @all[ $n_before .. $#all ];
is(scalar(@mp), 1, 'message_payload: one submit_sm for 3 segments');
is($mp[0]{sm_hex}, '', 'message_payload: short_message empty');
is(pack('H*', $mp[0]{tlv}{'0x0424'}), $long, 'message_payload TLV holds the whole text');
is(sql("SELECT segments FROM envoisms.messages WHERE message_id = '$mp'"), '3', 'still billed as 3 segments');

# ---- per-bind rate cap, and GSM packed 7-bit as a carrier setting
sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, max_per_second, config) VALUES
    ('simslow', 'smpp', 5, jsonb_build_object('host', '127.0.0.1', 'port', } . $port . q{,
     'system_id', 'esme', 'password', 'secret', 'gsm_packing', true))});
sql("INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('sms', '2126998', 'simslow')");
wait_for("SELECT state FROM envoisms.smpp_binds() WHERE carrier_id = 'simslow'", 'bound', 'rate-capped carrier bound');
$n_before = scalar(pdus('submit_sm'));
# all 12 queued by one transaction, so only the cap spaces them
my @slow = split /\n/, sql("SELECT envoisms.message_send('$account', '+2126998' || lpad(i::text, 5, '0'), 'Hello')->>'id'"
	  . " FROM generate_series(1, 12) i");
$list = join(',', map { "'$_'" } @slow);
wait_for("SELECT count(*) FROM envoisms.messages WHERE message_id IN ($list) AND status = 'delivered'", '12',
	'rate-capped carrier: all 12 delivered');
@all = pdus('submit_sm');
my @slow_pdus = @all[ $n_before .. $#all ];
my $span = $slow_pdus[-1]{t} - $slow_pdus[0]{t};
cmp_ok($span, '>=', 1.0, sprintf('max_per_second 5: 12 submits spread over %.2f s (a burst of 5, then 5 a second)', $span));
is($slow_pdus[0]{sm_hex}, 'c8329bfd06', 'gsm_packing: "Hello" sent as packed septets C8 32 9B FD 06');

# ---- clean unbind when the carrier goes away
my $unbinds = () = pdus('unbind');
sql("DELETE FROM envoisms.routes WHERE carrier_id = 'simpayload'");
sql("DELETE FROM envoisms.carriers WHERE carrier_id = 'simpayload'");
wait_for("SELECT count(*) FROM envoisms.smpp_binds() WHERE carrier_id = 'simpayload'", '0',
	'deleting a carrier stops its bind');
cmp_ok(scalar(pdus('unbind')), '>', $unbinds, 'the stopping bind sent unbind');

books_ok($account, 'at the end');
stop_smsc($smsc);
$node->stop('fast');
like(slurp_file($node->logfile), qr/envoisms smpp bind "sim": stopped/, 'the bind stopped cleanly at shutdown');
done_testing();
