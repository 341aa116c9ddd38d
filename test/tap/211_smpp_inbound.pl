# 211_smpp_inbound.pl — inbound messages (MO) over SMPP and STOP / START:
# a deliver_sm that is not a receipt becomes a messages row (direction
# inbound, status received) of the account owning the number, listed by
# message_list(direction => 'inbound'), logged and announced as
# message.received; concatenated MO parts are joined; STOP-like keywords
# (French, English, Arabic, Darija) add the sender to the opt-outs and START
# removes it; a number nobody owns is kept aside; inbound_receive is the
# same entry point for the http and whatsapp_cloud carriers.
use strict;
use warnings;

use Encode qw(decode encode);
use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(usleep time);

use EnvoismsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('smppmo',
	conf => [ "envoisms.smpp_supervisor_naptime = '200ms'", "envoisms.smpp_poll = '100ms'" ]);
my $root = $EnvoismsTest::ROOT;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $cport = PostgreSQL::Test::Cluster::get_free_port();
my $record = "$PostgreSQL::Test::Utils::tmp_check/smsc_mo_$port.jsonl";

sub sql { return $node->safe_psql('envoisms', $_[0]) }

my $smsc = fork();
die "fork: $!" unless defined $smsc;
if ($smsc == 0)
{
	open(STDOUT, '>>', "$PostgreSQL::Test::Utils::log_path/smsc_mo_$port.log");
	open(STDERR, '>&', \*STDOUT);
	exec($^X, "$root/test/peers/smsc.pl", '--port', $port, '--control-port', $cport,
		'--record', $record, '--receipts', 'none') or die "exec: $!";
}

sub ctl
{
	my ($cmd) = @_;
	my $s;
	my $deadline = time + 10;
	until ($s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $cport, Timeout => 5))
	{
		die "control port: $!" if time > $deadline;
		usleep(50_000);
	}
	print $s "$cmd\n";
	my $answer = <$s>;
	close $s;
	chomp $answer if defined $answer;
	return $answer;
}

# Send an MO: text in GSM septets (dc 0) or UCS-2 (dc 8).
sub mo
{
	my ($from, $to, $text, %o) = @_;
	my $dc = $o{dc} // 0;
	my $bytes = $o{raw} // ($dc == 8 ? encode('UTF-16BE', decode('UTF-8', $text)) : $text);
	return ctl(sprintf('mo %s %s %d %d %s', $from, $to, $dc, $o{esm} // 0, unpack('H*', $bytes)));
}

sub wait_for
{
	my ($sql, $expected, $what) = @_;
	ok($node->poll_query_until('envoisms', $sql, $expected), $what)
	  or diag('last: ' . sql($sql));
}

my $account = sql("SELECT envoisms.account_create('MO account', 50)");
sql("INSERT INTO envoisms.inbound_numbers (account_id, number) VALUES ('$account', '+212700000001'), ('$account', '3030')");
sql("INSERT INTO envoisms.inbound_numbers (account_id, number, channel) VALUES ('$account', '+212700000001', 'whatsapp')");
sql("SELECT envoisms.webhook_create('$account', 'https://hooks.example.com/in', ARRAY['message.received'])");
sql(q{INSERT INTO envoisms.carriers (carrier_id, kind, config) VALUES
    ('sim', 'smpp', jsonb_build_object('host', '127.0.0.1', 'port', } . $port . q{, 'system_id', 'esme'))});
sql("INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('sms', '', 'sim')");
wait_for("SELECT state FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'", 'bound', 'bound');

sub inbound_count
{
	return sql("SELECT count(*) FROM envoisms.messages WHERE account_id = '$account' AND direction = 'inbound'");
}

# ---- a plain MO
is(mo('212612345678', '212700000001', "Salam, prix 5\x1be ?"), 'ok 1', 'the simulator sent a deliver_sm');
wait_for("SELECT count(*) FROM envoisms.messages WHERE direction = 'inbound'", '1', 'the MO became a message');
my $row = sql("SELECT message_id || '|' || status || '|' || from_number || '|' || to_number || '|' || body || '|' || carrier_id"
	  . " FROM envoisms.messages WHERE direction = 'inbound'");
my ($id, @fields) = split /\|/, $row;
is_deeply(\@fields, [ 'received', '+212612345678', '+212700000001', 'Salam, prix 5€ ?', 'sim' ],
	'inbound row: received, from the sender, to our number, GSM text decoded (euro from its escape)');
like(sql("SELECT envoisms.message_list('$account', direction => 'inbound')::text"), qr/\Q$id\E/,
	'message_list(direction => inbound) lists it');
is(sql("SELECT count(*) FROM envoisms.message_events WHERE message_id = '$id' AND status = 'received'"), '1',
	'a received event is logged');
is(sql("SELECT count(*) FROM envoisms.webhook_deliveries WHERE account_id = '$account' AND event_type = 'message.received'"),
	'1', 'a message.received webhook delivery is queued');
is(sql("SELECT charged_mad FROM envoisms.messages WHERE message_id = '$id'"), '0.0000', 'an inbound message costs nothing');
usleep(300_000);
my @resps = grep { $_->{cmd} eq 'deliver_sm_resp' } map { decode_json($_) } do { open(my $f, '<', $record); <$f> };
ok(@resps >= 1 && $resps[-1]{status} == 0, 'the deliver_sm was answered ESME_ROK once stored');

# ---- UCS-2 MO to a short code, and a concatenated MO
mo('212612345678', '3030', 'مرحبا', dc => 8);
wait_for("SELECT body FROM envoisms.messages WHERE direction = 'inbound' AND to_number = '3030'", 'مرحبا',
	'UCS-2 MO to a short code');
mo('212612345678', '212700000001', '', esm => 0x40, raw => "\x05\x00\x03\x7f\x02\x02world");
mo('212612345678', '212700000001', '', esm => 0x40, raw => "\x05\x00\x03\x7f\x02\x01Hello ");
wait_for("SELECT count(*) FROM envoisms.messages WHERE direction = 'inbound' AND body = 'Hello world'", '1',
	'the parts of a concatenated MO arrive as one message, in order');

# ---- STOP and START
sub opted_out
{
	my ($phone) = @_;
	return sql("SELECT count(*) FROM envoisms.optouts WHERE account_id = '$account' AND phone = '$phone' AND source = 'inbound'");
}
my $n = inbound_count();
mo('212611111111', '212700000001', 'STOP');
wait_for("SELECT count(*) FROM envoisms.optouts WHERE phone = '+212611111111'", '1', 'STOP adds the sender to the opt-outs');
is(opted_out('+212611111111'), '1', 'with source inbound');
my ($ret, $out, $err) = $node->psql('envoisms',
	"SELECT envoisms.message_send('$account', '+212611111111', 'promo')");
like($err, qr/opted out/, 'sending to them now fails with OPTED_OUT');
mo('212611111111', '212700000001', 'start');
wait_for("SELECT count(*) FROM envoisms.optouts WHERE phone = '+212611111111'", '0', 'START removes the opt-out');
like(sql("SELECT envoisms.message_send('$account', '+212611111111', 'welcome back')->>'status'"), qr/queued/,
	'and sending works again');

my %keywords = (
	'212611111112' => [ 'ARRÊT', 8 ],
	'212611111113' => [ 'توقف', 8 ],
	'212611111114' => [ 'إلغاء', 8 ],
	'212611111115' => [ 'Baraka!', 0 ],
	'212611111116' => [ ' Unsubscribe ', 0 ],
	'212611111117' => [ 'STOPALL', 0 ],
);
for my $from (sort keys %keywords)
{
	my ($text, $dc) = @{ $keywords{$from} };
	mo($from, '212700000001', $text, dc => $dc);
	wait_for("SELECT count(*) FROM envoisms.optouts WHERE phone = '+$from'", '1', "\"$text\" opts the sender out");
}
mo('212611111118', '212700000001', 'stop sending me promos please');
mo('212611111118', '212700000001', 'safi');
wait_for("SELECT count(*) FROM envoisms.messages WHERE from_number = '+212611111118'", '2', 'two more MOs');
is(sql("SELECT count(*) FROM envoisms.optouts WHERE phone = '+212611111118'"), '0',
	'a sentence containing stop, or the ambiguous "safi", does not opt out');

# ---- a number nobody owns
mo('212612345678', '212799999999', 'lost');
wait_for("SELECT count(*) FROM envoisms.inbound_unmatched WHERE to_number = '+212799999999' AND body = 'lost'", '1',
	'an MO to a number no account owns is kept in inbound_unmatched');

# ---- the same entry point for http / whatsapp_cloud carriers, idempotent by carrier_ref
my $w1 = sql("SELECT envoisms.inbound_receive('sandbox', '+212612345678', '+212700000001', 'via whatsapp', 'wamid.1', 'whatsapp')");
my $w2 = sql("SELECT envoisms.inbound_receive('sandbox', '+212612345678', '+212700000001', 'via whatsapp', 'wamid.1', 'whatsapp')");
like($w1, qr/^msg_/, 'inbound_receive returns the new message id');
is($w2, $w1, 'the same carrier_ref received twice is one message');
is(sql("SELECT channel FROM envoisms.messages WHERE message_id = '$w1'"), 'whatsapp', 'on its channel');

cmp_ok(sql("SELECT inbound FROM envoisms.smpp_binds() WHERE carrier_id = 'sim'"), '>=', 15,
	'smpp_binds() counted the 15 inbound PDUs');
is(sql("SELECT bool_and(ok) FROM envoisms.balance_check()"), 't', 'balance_check holds');

kill 'TERM', $smsc;
waitpid($smsc, 0);
done_testing();
