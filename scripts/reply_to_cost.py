"""RabbitMQ's CPU per request/reply round trip, with the reply through an exclusive queue or
through direct reply-to (`amq.rabbitmq.reply-to`): the measurement behind BENCHMARKS.md's
"direct reply-to" note. Not part of CI.

    python3 -m pip install pika
    python3 scripts/reply_to_cost.py queue 3000
    python3 scripts/reply_to_cost.py direct 3000

Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) running as the `rabbitmq` user on this machine:
its beam.smp's CPU time is read from /proc before and after the round trips.
"""
import multiprocessing
import subprocess
import sys
import time

import pika


def beam_cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def responder(ready):
    """The dispatcher's part: a transient classic request queue, answers to `reply_to`."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    channel.queue_declare("reply-to-cost.requests", durable=False, auto_delete=True)
    channel.basic_qos(prefetch_count=64)
    ready.set()

    def answer(chan, method, properties, body):
        if body == b"stop":
            chan.basic_ack(method.delivery_tag)
            chan.stop_consuming()
            return
        chan.basic_publish("", properties.reply_to, body)
        chan.basic_ack(method.delivery_tag)

    channel.basic_consume("reply-to-cost.requests", answer)
    channel.start_consuming()
    connection.close()


def main():
    mode, count = sys.argv[1], int(sys.argv[2])
    if mode not in ("queue", "direct"):
        sys.exit(f"mode must be queue or direct, not {mode!r}")
    pid = int(subprocess.check_output(["pgrep", "-u", "rabbitmq", "beam.smp"]).split()[0])
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=responder, args=(ready,))
    server.start()
    ready.wait()
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    if mode == "direct":
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = channel.queue_declare("", exclusive=True).method.queue
    answers = []
    channel.basic_consume(reply_to, lambda *message: answers.append(message), auto_ack=True)
    started, cpu_before = time.time(), beam_cpu_seconds(pid)
    for _ in range(count):
        channel.basic_publish(
            "", "reply-to-cost.requests", b"x" * 100, pika.BasicProperties(reply_to=reply_to)
        )
        while not answers:
            connection.process_data_events(time_limit=None)
        answers.pop()
    cpu, seconds = beam_cpu_seconds(pid) - cpu_before, time.time() - started
    channel.basic_publish("", "reply-to-cost.requests", b"stop")
    server.join()
    print(f"{mode}: {count / seconds:.0f} round trips/s, RabbitMQ CPU {1000 * cpu / count:.3f} ms each")


if __name__ == "__main__":
    main()
