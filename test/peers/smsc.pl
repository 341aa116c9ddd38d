#!/usr/bin/perl
# smsc.pl — an SMSC simulator for the SMPP tests and benchmark, built on
# Net::SMPP (Debian libnet-smpp-perl). One process, one select loop.
#
#   smsc.pl --port 2775 [--control-port 2776] [--record pdus.jsonl]
#           [--system-id ID --password PW] [--receipts tlv|text|both|none|early]
#           [--receipt-delay-ms 0] [--id-prefix smsc] [--pidfile F]
#
# It accepts any number of binds (bind_transceiver/transmitter/receiver;
# refuses a wrong system_id/password with ESME_RINVPASWD), answers
# enquire_link, unbind and submit_sm (message ids "<prefix><n>"), and sends
# delivery receipts for accepted submits when registered_delivery asks:
#   tlv   receipted_message_id + message_state TLVs (short_message empty)
#   text  the text form "id:… sub:001 dlvrd:001 submit date:… done date:…
#         stat:DELIVRD err:000 text:…" only
#   both  the text form and the TLVs
#   early the text form, sent BEFORE the submit_sm_resp
#   none  no receipts
# Every PDU it receives is appended to --record as one JSON object per line
# (cmd, seq, status, fields, short_message as hex, TLVs as hex by tag).
#
# The control port takes one command per line and answers one line:
#   throttle N        answer the next N submit_sm with ESME_RTHROTTLED (0x58)
#   status CODE N     answer the next N submit_sm with CODE (decimal or 0x..)
#   noresp N          swallow the next N submit_sm (no answer at all)
#   nack CODE N       answer the next N submit_sm with generic_nack CODE
#   crash N           exit at once (no answer, no unbind) on the Nth next submit_sm
#   receipts MODE     change the receipt mode; stat WORD the receipt stat
#   mo FROM TO DC ESM HEX   send a deliver_sm (data_coding DC, esm_class ESM,
#                     short_message HEX) to every bound session
#   counts            "submits=N accepted=N throttled=N binds=N unbinds=N enquires=N deliver_resps=N"
#   close             drop every session (no unbind)
#   unbind            send unbind to every session
# SIGTERM/SIGKILL it and start it again on the same port to simulate an SMSC
# restart; SIGUSR1 drops every session.
use strict;
use warnings;

use Getopt::Long;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use Net::SMPP;
use POSIX qw(strftime);
use Time::HiRes qw(time);

my %opt = (
    port             => 2775,
    receipts         => 'both',
    'receipt-delay-ms' => 0,
    'id-prefix'      => 'smsc',
    'system-id'      => '',
    password         => '',
);
GetOptions(\%opt, 'port=i', 'control-port=i', 'record=s', 'system-id=s', 'password=s',
    'receipts=s', 'receipt-delay-ms=i', 'id-prefix=s', 'pidfile=s', 'stat=s')
  or die "usage: see the top of $0\n";

$SIG{PIPE} = 'IGNORE';
my $stat = $opt{stat} // 'DELIVRD';
my $listen = Net::SMPP->new_listen('127.0.0.1', port => $opt{port}, smpp_version => 0x34)
  or die "listen on $opt{port}: $!\n";
my $control = $opt{'control-port'}
  ? IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $opt{'control-port'},
    Listen => 16, ReuseAddr => 1, Proto => 'tcp') || die "control port: $!\n"
  : undef;
my $record;
if ($opt{record})
{
    open($record, '>>', $opt{record}) or die "open $opt{record}: $!\n";
    $record->autoflush(1);
}
if ($opt{pidfile})
{
    open(my $p, '>', $opt{pidfile}) or die "pidfile: $!\n";
    print $p "$$\n";
    close $p;
}

my $sel = IO::Select->new($listen);
$sel->add($control) if $control;
my %sessions;    # fileno => { conn, buf, bound }
my %controls;    # fileno => { sock, buf }
my %count = map { $_ => 0 } qw(submits accepted throttled binds unbinds enquires deliver_resps);
my ($throttle, $noresp, $status_n, $status_code, $nack_n, $nack_code, $crash) = (0, 0, 0, 0, 0, 0, 0);
my $next_id = 0;
my @scheduled;    # [time, conn, sub]
my $json = JSON::PP->new->canonical;
my $drop_all = 0;
$SIG{USR1} = sub { $drop_all = 1 };
$SIG{TERM} = sub { exit 0 };

sub record_pdu
{
    my ($pdu) = @_;
    return unless $record;
    my %r = (t => sprintf('%.3f', time), cmd => $pdu->{cmd_name}, seq => $pdu->{seq},
        status => $pdu->{status});
    for my $k (qw(system_id password system_type service_type source_addr source_addr_ton
        source_addr_npi destination_addr dest_addr_ton dest_addr_npi esm_class data_coding
        registered_delivery validity_period message_id))
    {
        $r{$k} = $pdu->{$k} if defined $pdu->{$k};
    }
    $r{sm_hex} = unpack('H*', $pdu->{short_message}) if defined $pdu->{short_message};
    for my $tag (grep { /^\d+$/ } keys %$pdu)
    {
        $r{tlv}{ sprintf('0x%04x', $tag) } = unpack('H*', $pdu->{$tag});
    }
    print $record $json->encode(\%r), "\n";
}

sub drop
{
    my ($fd) = @_;
    my $s = delete $sessions{$fd} or return;
    $sel->remove($s->{conn});
    close $s->{conn};
}

sub receipt
{
    my ($conn, $pdu, $id) = @_;
    my $mode = $opt{receipts};
    return if $mode eq 'none' || !($pdu->{registered_delivery} & 1);
    my $date = strftime('%y%m%d%H%M', gmtime);
    my $text = sprintf('id:%s sub:001 dlvrd:%s submit date:%s done date:%s stat:%s err:%s text:%s',
        $id, $stat eq 'DELIVRD' ? '001' : '000', $date, $date, $stat,
        $stat eq 'DELIVRD' ? '000' : '001', substr($pdu->{short_message} // '', 0, 20) =~ s/[^ -~]/./gr);
    my %states = (ENROUTE => 1, DELIVRD => 2, EXPIRED => 3, DELETED => 4, UNDELIV => 5,
        ACCEPTD => 6, UNKNOWN => 7, REJECTD => 8);
    my @tlv = $mode eq 'text' || $mode eq 'early' ? ()
      : (receipted_message_id => "$id\0", message_state => chr($states{$stat} // 7));
    $conn->deliver_sm(
        source_addr_ton => $pdu->{dest_addr_ton}, source_addr_npi => $pdu->{dest_addr_npi},
        source_addr => $pdu->{destination_addr},
        dest_addr_ton => $pdu->{source_addr_ton}, dest_addr_npi => $pdu->{source_addr_npi},
        destination_addr => $pdu->{source_addr},
        esm_class => 0x04, data_coding => 0,
        short_message => $mode eq 'tlv' ? '' : $text,
        @tlv, async => 1);
}

sub submit
{
    my ($conn, $pdu) = @_;
    $count{submits}++;
    POSIX::_exit(3) if $crash > 0 && --$crash == 0;    # a crash: this one is never answered
    if ($noresp > 0)
    {
        $noresp--;
        return;
    }
    if ($throttle > 0)
    {
        $throttle--;
        $count{throttled}++;
        $conn->submit_sm_resp(seq => $pdu->{seq}, status => 0x58, message_id => '');
        return;
    }
    if ($nack_n > 0)
    {
        $nack_n--;
        $conn->generic_nack(seq => $pdu->{seq}, status => $nack_code);
        return;
    }
    if ($status_n > 0)
    {
        $status_n--;
        $conn->submit_sm_resp(seq => $pdu->{seq}, status => $status_code, message_id => '');
        return;
    }
    my $id = $opt{'id-prefix'} . (++$next_id);
    $count{accepted}++;
    if ($opt{receipts} eq 'early')
    {
        receipt($conn, $pdu, $id);
        $conn->submit_sm_resp(seq => $pdu->{seq}, message_id => $id);
        return;
    }
    $conn->submit_sm_resp(seq => $pdu->{seq}, message_id => $id);
    if ($opt{'receipt-delay-ms'} > 0)
    {
        push @scheduled, [time + $opt{'receipt-delay-ms'} / 1000, $conn, sub { receipt($conn, $pdu, $id) }];
    }
    else
    {
        receipt($conn, $pdu, $id);
    }
}

sub handle_pdu
{
    my ($fd, $pdu) = @_;
    my $s = $sessions{$fd};
    my $conn = $s->{conn};
    my $cmd = $pdu->{cmd};
    record_pdu($pdu);
    if ($cmd == 0x00000009 || $cmd == 0x00000002 || $cmd == 0x00000001)
    {
        my $ok = ($opt{'system-id'} eq '' || $pdu->{system_id} eq $opt{'system-id'})
          && ($opt{password} eq '' || $pdu->{password} eq $opt{password});
        my $resp = { 9 => 'bind_transceiver_resp', 2 => 'bind_transmitter_resp',
            1 => 'bind_receiver_resp' }->{$cmd};
        $conn->$resp(seq => $pdu->{seq}, status => $ok ? 0 : 0x0E, system_id => 'smscsim');
        $count{binds}++ if $ok;
        $s->{bound} = $ok;
    }
    elsif ($cmd == 0x00000004)
    {
        submit($conn, $pdu);
    }
    elsif ($cmd == 0x00000015)
    {
        $count{enquires}++;
        $conn->enquire_link_resp(seq => $pdu->{seq});
    }
    elsif ($cmd == 0x00000006)
    {
        $count{unbinds}++;
        $conn->unbind_resp(seq => $pdu->{seq});
        drop($fd);
    }
    elsif ($cmd == 0x80000005)
    {
        $count{deliver_resps}++;
    }
    elsif ($cmd & 0x80000000)
    {
        # other responses: nothing to do
    }
    else
    {
        $conn->generic_nack(seq => $pdu->{seq}, status => 0x03);
    }
}

# Cut complete PDUs out of a session's buffer and decode them with Net::SMPP.
sub read_session
{
    my ($fd) = @_;
    my $s = $sessions{$fd};
    my $n = sysread($s->{conn}, $s->{buf}, 65536, length $s->{buf});
    if (!$n)
    {
        drop($fd);
        return;
    }
    while (length($s->{buf}) >= 16)
    {
        my ($len, $cmd, $status, $seq) = unpack('NNNN', $s->{buf});
        if ($len < 16 || $len > 65536)
        {
            drop($fd);
            return;
        }
        last if length($s->{buf}) < $len;
        my $raw = substr($s->{buf}, 0, $len, '');
        my $pdu = { cmd => $cmd, status => $status, seq => $seq, data => substr($raw, 16) };
        my $t = Net::SMPP::pdu_tab->{$cmd};
        if ($t)
        {
            $pdu->{cmd_name} = $t->{cmd};
            local $SIG{__WARN__} = sub { };
            my $mlen = $t->{decode}->($pdu, $s->{conn});
            Net::SMPP::decode_optional_params($pdu, $mlen) if $mlen < length $pdu->{data};
        }
        else
        {
            $pdu->{cmd_name} = sprintf('0x%08x', $cmd);
        }
        handle_pdu($fd, $pdu);
        return unless $sessions{$fd};
    }
}

sub bound_sessions
{
    return grep { $_->{bound} } values %sessions;
}

sub control_command
{
    my ($line) = @_;
    my @w = split ' ', $line;
    my $c = shift(@w) // '';
    if ($c eq 'throttle') { $throttle = $w[0] // 1; return 'ok' }
    if ($c eq 'noresp') { $noresp = $w[0] // 1; return 'ok' }
    if ($c eq 'status') { $status_code = $w[0] =~ /^0x/i ? hex($w[0]) : $w[0]; $status_n = $w[1] // 1; return 'ok' }
    if ($c eq 'crash') { $crash = $w[0] // 1; return 'ok' }
    if ($c eq 'nack') { $nack_code = $w[0] =~ /^0x/i ? hex($w[0]) : $w[0]; $nack_n = $w[1] // 1; return 'ok' }
    if ($c eq 'receipts') { $opt{receipts} = $w[0]; return 'ok' }
    if ($c eq 'stat') { $stat = $w[0]; return 'ok' }
    if ($c eq 'counts') { return join(' ', map { "$_=$count{$_}" } sort keys %count) }
    if ($c eq 'close') { drop($_) for keys %sessions; return 'ok' }
    if ($c eq 'unbind') { $_->{conn}->unbind(async => 1) for bound_sessions(); return 'ok' }
    if ($c eq 'mo')
    {
        my ($from, $to, $dc, $esm, $hex) = @w;
        my @b = bound_sessions();
        return 'error no bound session' unless @b;
        for my $s (@b)
        {
            $s->{conn}->deliver_sm(
                source_addr_ton => ($from =~ /^\d{9,}$/ ? 1 : 0), source_addr_npi => 1,
                source_addr => $from,
                dest_addr_ton => ($to =~ /^\d{9,}$/ ? 1 : 0), dest_addr_npi => 1,
                destination_addr => $to,
                esm_class => $esm, data_coding => $dc,
                short_message => pack('H*', $hex // ''), async => 1);
        }
        return 'ok ' . scalar(@b);
    }
    return "error unknown command $c";
}

while (1)
{
    if ($drop_all)
    {
        drop($_) for keys %sessions;
        $drop_all = 0;
    }
    my $timeout = 1;
    if (@scheduled)
    {
        my $first = (sort { $a->[0] <=> $b->[0] } @scheduled)[0][0];
        $timeout = $first - time;
        $timeout = 0 if $timeout < 0;
    }
    my @ready = $sel->can_read($timeout);
    for my $h (@ready)
    {
        if ($h == $listen)
        {
            my $conn = $listen->accept or next;
            $conn->autoflush(1);
            $sessions{ fileno($conn) } = { conn => $conn, buf => '', bound => 0 };
            $sel->add($conn);
        }
        elsif ($control && $h == $control)
        {
            my $c = $control->accept or next;
            $controls{ fileno($c) } = { sock => $c, buf => '' };
            $sel->add($c);
        }
        elsif ($controls{ fileno($h) })
        {
            my $c = $controls{ fileno($h) };
            my $n = sysread($h, $c->{buf}, 4096, length $c->{buf});
            if (!$n)
            {
                $sel->remove($h);
                delete $controls{ fileno($h) };
                close $h;
                next;
            }
            while ($c->{buf} =~ s/^([^\n]*)\n//)
            {
                my $answer = control_command($1);
                syswrite($h, "$answer\n");
            }
        }
        elsif ($sessions{ fileno($h) })
        {
            read_session(fileno($h));
        }
    }
    my $now = time;
    my @due = grep { $_->[0] <= $now } @scheduled;
    @scheduled = grep { $_->[0] > $now } @scheduled;
    for my $e (@due)
    {
        my ($conn) = $e->[1];
        next unless grep { $_->{conn} == $conn } values %sessions;
        $e->[2]->();
    }
}
