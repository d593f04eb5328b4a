# A NATS server image from nats-server built on the host (the version in
# go.mod). Like the official images, its entrypoint is nats-server, so it
# takes the same flags: compose runs it with `-c /etc/nats/nats.conf`.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
CMD ["-js"]
